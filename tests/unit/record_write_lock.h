// RecordWriteLock: a test's way to make the state store's writes fail, as on a broken disk.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "core/sqlite_db.h"

namespace policyd::core {

// Another connection holding the record's write lock (BEGIN IMMEDIATE): while it holds it past
// the store's busy timeout (500 ms), the record's writes fail, as on a broken disk.
class RecordWriteLock {
 public:
  explicit RecordWriteLock(const std::string& db_path) {
    auto db = SqliteDb::open(db_path, false);
    if (!db.ok()) {
      error_ = db.error().message();
      return;
    }
    if (Status st = (*db)->exec("BEGIN IMMEDIATE"); !st.ok()) {
      error_ = st.error().message();
      return;
    }
    db_ = std::move(db).value();
  }
  ~RecordWriteLock() { release(); }
  RecordWriteLock(const RecordWriteLock&) = delete;
  RecordWriteLock& operator=(const RecordWriteLock&) = delete;

  [[nodiscard]] bool held() const { return db_ != nullptr; }
  [[nodiscard]] const std::string& error() const { return error_; }
  // Rolls back and closes the connection: the record can be written again.
  void release() {
    if (!db_) return;
    EXPECT_TRUE(db_->exec("ROLLBACK").ok());
    db_.reset();
  }

 private:
  std::unique_ptr<SqliteDb> db_;
  std::string error_;
};

}  // namespace policyd::core
