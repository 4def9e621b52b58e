// SqliteDb: thin RAII over the SQLite C API.
#include "core/sqlite_db.h"

#include <utility>

namespace policyd::core {

SqliteStmt::~SqliteStmt() {
  if (stmt_) sqlite3_finalize(stmt_);
}

SqliteStmt::SqliteStmt(SqliteStmt&& other) noexcept
    : db_(other.db_), stmt_(std::exchange(other.stmt_, nullptr)) {}

SqliteStmt& SqliteStmt::operator=(SqliteStmt&& other) noexcept {
  if (this != &other) {
    if (stmt_) sqlite3_finalize(stmt_);
    db_ = other.db_;
    stmt_ = std::exchange(other.stmt_, nullptr);
  }
  return *this;
}

SqliteStmt& SqliteStmt::bind(int index, int64_t value) {
  sqlite3_bind_int64(stmt_, index, value);
  return *this;
}

SqliteStmt& SqliteStmt::bind(int index, std::string_view text) {
  sqlite3_bind_text(stmt_, index, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
  return *this;
}

SqliteStmt& SqliteStmt::bind_blob(int index, const void* data, size_t size) {
  // A zero-length blob must stay a blob (not NULL): SQLite wants a non-null pointer for it.
  static const char kEmpty = 0;
  sqlite3_bind_blob(stmt_, index, size ? data : &kEmpty, static_cast<int>(size), SQLITE_TRANSIENT);
  return *this;
}

SqliteStmt& SqliteStmt::bind_null(int index) {
  sqlite3_bind_null(stmt_, index);
  return *this;
}

Result<bool> SqliteStmt::step() {
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  Error e = db_->error("run \"" + std::string(sqlite3_sql(stmt_)) + "\"");
  sqlite3_reset(stmt_);
  return e;
}

Status SqliteStmt::run() {
  Result<bool> r = step();
  reset();
  if (!r.ok()) return r.error();
  return {};
}

void SqliteStmt::reset() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

int64_t SqliteStmt::column_int(int index) const { return sqlite3_column_int64(stmt_, index); }

std::string SqliteStmt::column_text(int index) const {
  const auto* p = sqlite3_column_text(stmt_, index);
  return p ? std::string(reinterpret_cast<const char*>(p),
                         static_cast<size_t>(sqlite3_column_bytes(stmt_, index)))
           : std::string();
}

std::string SqliteStmt::column_blob(int index) const {
  const void* p = sqlite3_column_blob(stmt_, index);
  const int n = sqlite3_column_bytes(stmt_, index);
  return p ? std::string(static_cast<const char*>(p), static_cast<size_t>(n)) : std::string();
}

bool SqliteStmt::column_is_null(int index) const {
  return sqlite3_column_type(stmt_, index) == SQLITE_NULL;
}

Result<std::unique_ptr<SqliteDb>> SqliteDb::open(const std::string& path, bool create) {
  sqlite3* raw = nullptr;
  // NOFOLLOW: a symlink planted in state_dir must not redirect the record.
  const int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_NOFOLLOW |
                    (create ? SQLITE_OPEN_CREATE : 0);
  const int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
  std::unique_ptr<SqliteDb> db(new SqliteDb(path, raw));
  if (rc != SQLITE_OK) return db->error("open");
  sqlite3_extended_result_codes(raw, 1);
  sqlite3_busy_timeout(raw, 500);
  return db;
}

SqliteDb::~SqliteDb() {
  if (db_) sqlite3_close_v2(db_);
}

Status SqliteDb::exec(const std::string& sql) {
  char* msg = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &msg) == SQLITE_OK) return {};
  std::string text = msg ? msg : "unknown error";
  sqlite3_free(msg);
  return Error{ErrorCode::kInternal, 0, path_ + ": " + text + " (running \"" + sql + "\")"};
}

Result<SqliteStmt> SqliteDb::prepare(const std::string& sql) {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v3(db_, sql.c_str(), -1, SQLITE_PREPARE_PERSISTENT, &stmt, nullptr) !=
      SQLITE_OK) {
    return error("prepare \"" + sql + "\"");
  }
  return SqliteStmt(this, stmt);
}

Result<std::string> SqliteDb::query_text(const std::string& sql) {
  POLICYD_ASSIGN_OR_RETURN(SqliteStmt stmt, prepare(sql));
  POLICYD_ASSIGN_OR_RETURN(bool row, stmt.step());
  return row ? stmt.column_text(0) : std::string();
}

Error SqliteDb::error(const std::string& what) const {
  const char* msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
  return Error{ErrorCode::kInternal, 0, path_ + ": " + what + ": " + msg};
}

}  // namespace policyd::core
