// What policyd reads from state_dir at start, on arbitrary bytes. state_v1_fuzz: the earlier
// format's manifest (`state`, imported once at first start) through v1::read_state.
// state_db_fuzz (POLICYD_FUZZ_DB): the bytes as `state.db`, opened (integrity check, format,
// prepared statements) and loaded as a start would. Both must refuse what they cannot use with
// an error, never crash.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/state_store.h"
#include "core/state_v1.h"

namespace {

const std::string& dir() {
  static const std::string d = [] {
    std::string tmpl = (std::filesystem::temp_directory_path() / "policyd-fuzz-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
    return tmpl;
  }();
  return d;
}

void write(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  spdlog::set_level(spdlog::level::off);
  (void)dir();
  std::atexit([] {
    std::error_code ec;
    std::filesystem::remove_all(dir(), ec);
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
#ifndef POLICYD_FUZZ_DB
  write(dir() + "/state", data, size);
  (void)policyd::core::v1::read_state(dir());
#else
  for (const char* f : {"/state.db-wal", "/state.db-shm", "/state.db.new"}) {
    std::filesystem::remove(dir() + f);
  }
  write(dir() + "/state.db", data, size);
  auto store = policyd::core::StateStore::open(dir());
  if (store.ok()) (void)(*store)->load();
#endif
  return 0;
}
