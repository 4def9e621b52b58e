// SqliteDb: the few SQLite calls the state store makes, with errors as Result. A connection
// belongs to one thread at a time; statements are prepared once and reset after each use.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "util/result.h"

namespace policyd::core {

class SqliteDb;

// One prepared statement. Bind parameters are 1-based as in SQLite; step() returns true while
// a row is available. Destroyed before its database.
class SqliteStmt {
 public:
  SqliteStmt() = default;
  SqliteStmt(SqliteDb* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
  ~SqliteStmt();
  SqliteStmt(SqliteStmt&& other) noexcept;
  SqliteStmt& operator=(SqliteStmt&& other) noexcept;
  SqliteStmt(const SqliteStmt&) = delete;
  SqliteStmt& operator=(const SqliteStmt&) = delete;

  SqliteStmt& bind(int index, int64_t value);
  SqliteStmt& bind(int index, std::string_view text);
  SqliteStmt& bind_blob(int index, const void* data, size_t size);
  SqliteStmt& bind_null(int index);
  // Runs the statement once more: true with a row to read, false when done.
  [[nodiscard]] Result<bool> step();
  // Runs a statement that returns no rows, then resets it for the next use.
  [[nodiscard]] Status run();
  void reset();

  [[nodiscard]] int64_t column_int(int index) const;
  [[nodiscard]] std::string column_text(int index) const;
  [[nodiscard]] std::string column_blob(int index) const;  // bytes as a string
  [[nodiscard]] bool column_is_null(int index) const;

 private:
  SqliteDb* db_ = nullptr;
  sqlite3_stmt* stmt_ = nullptr;
};

class SqliteDb {
 public:
  // Opens (and with `create`, creates) the database file. A lock another connection holds (an
  // operator's sqlite3 writing) is waited for up to half a second before a statement fails.
  [[nodiscard]] static Result<std::unique_ptr<SqliteDb>> open(const std::string& path, bool create);
  ~SqliteDb();
  SqliteDb(const SqliteDb&) = delete;
  SqliteDb& operator=(const SqliteDb&) = delete;

  [[nodiscard]] const std::string& path() const { return path_; }
  // Runs one or more statements that return no rows.
  [[nodiscard]] Status exec(const std::string& sql);
  [[nodiscard]] Result<SqliteStmt> prepare(const std::string& sql);
  // The first column of the first row of `sql` as text ("" when no row).
  [[nodiscard]] Result<std::string> query_text(const std::string& sql);
  // What SQLite says went wrong last, prefixed with `what`.
  [[nodiscard]] Error error(const std::string& what) const;

 private:
  SqliteDb(std::string path, sqlite3* db) : path_(std::move(path)), db_(db) {}
  std::string path_;
  sqlite3* db_ = nullptr;
};

}  // namespace policyd::core
