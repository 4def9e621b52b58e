// What policyd reads from state_dir at start, on arbitrary bytes (this build skips the v1
// format's checksums: FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION).
// state_v1_fuzz: the earlier format, imported once at first start. The input is a 4-byte
// little-endian length N, then N bytes of the manifest `state`, then the bytes of a contents
// file, written under every digest the manifest names; the manifest goes through
// v1::read_state, and what it accepts through the whole import (StateStore::open: read_contents,
// the import into a new state.db) and a load.
// state_db_fuzz (POLICYD_FUZZ_DB): the bytes as `state.db`, opened (integrity check, format,
// prepared statements) and loaded as a start would.
// Both must refuse what they cannot use with an error, never crash. Each input gets an empty
// state dir under $TMPDIR (tests/fuzz/run.sh points it into the build tree).
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "core/state_store.h"
#include "core/state_v1.h"

namespace {

namespace fs = std::filesystem;

const std::string& dir() {
  static const std::string d = [] {
    std::string tmpl = (fs::temp_directory_path() / "policyd-fuzz-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
    return tmpl;
  }();
  return d;
}

// An empty, private state dir for the next input.
void reset_dir() {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir(), ec)) fs::remove_all(e.path(), ec);
}

void write(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

void open_and_load() {
  auto store = policyd::core::StateStore::open(dir());
  if (store.ok()) (void)(*store)->load();
}

#ifndef POLICYD_FUZZ_DB
void import_v1(const uint8_t* data, size_t size) {
  if (size < 4) return;
  const size_t n =
      data[0] | (size_t{data[1]} << 8) | (size_t{data[2]} << 16) | (size_t{data[3]} << 24);
  if (n > size - 4) return;
  write(dir() + "/state", data + 4, n);
  auto old = policyd::core::v1::read_state(dir());
  if (!old.ok() || !old->has_value()) return;
  std::set<std::string> names;
  for (const auto& g : (*old)->history) {
    for (const auto& s : g.slots) names.insert(policyd::core::digest_hex(s.contents));
  }
  fs::create_directory(dir() + "/contents");
  const uint8_t* contents = data + 4 + n;
  const size_t contents_size = size - 4 - n;
  size_t written = 0;
  for (const std::string& name : names) {
    if (++written > 64) break;  // enough to reach every check
    write(dir() + "/contents/" + name, contents, contents_size);
  }
  open_and_load();
}
#endif

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  spdlog::set_level(spdlog::level::off);
  (void)dir();
  std::atexit([] {
    std::error_code ec;
    fs::remove_all(dir(), ec);
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  reset_dir();
#ifndef POLICYD_FUZZ_DB
  import_v1(data, size);
#else
  write(dir() + "/state.db", data, size);
  open_and_load();
#endif
  return 0;
}
