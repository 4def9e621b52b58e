// PrivateBpffs (mount(2) of a bpffs on a temp dir) and the privileged-test gate.
#include "support/bpffs.h"

#include <linux/bpf.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <vector>

#include "kernel/map.h"

namespace policyd::test {

Result<PrivateBpffs> PrivateBpffs::create() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "policyd-bpffs-XXXXXX").string();
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) return sys_error(errno, "mkdtemp " + tmpl);
  std::string dir(buf.data());
  if (::mount("bpf", dir.c_str(), "bpf", 0, nullptr) != 0) {
    int err = errno;
    ::rmdir(dir.c_str());
    return sys_error(err, "mount -t bpf bpf " + dir);
  }
  return PrivateBpffs(std::move(dir));
}

PrivateBpffs::~PrivateBpffs() { reset(); }

PrivateBpffs::PrivateBpffs(PrivateBpffs&& other) noexcept : path_(std::move(other.path_)) {
  other.path_.clear();
}

PrivateBpffs& PrivateBpffs::operator=(PrivateBpffs&& other) noexcept {
  if (this != &other) {
    reset();
    path_ = std::move(other.path_);
    other.path_.clear();
  }
  return *this;
}

std::string PrivateBpffs::join(std::string_view name) const {
  std::string out = path_;
  out += '/';
  out += name;
  return out;
}

void PrivateBpffs::reset() {
  if (path_.empty()) return;
  // MNT_DETACH: a test that still holds an fd to a pinned map must not make this fail.
  ::umount2(path_.c_str(), MNT_DETACH);
  ::rmdir(path_.c_str());
  path_.clear();
}

bool privileged_required() {
  const char* v = std::getenv("POLICYD_REQUIRE_PRIVILEGED");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

namespace {

// The outcome of creating one tiny map, computed once per process.
const Status& bpf_probe() {
  static const Status kProbe = []() -> Status {
    kernel::MapSpec spec;
    spec.type = BPF_MAP_TYPE_ARRAY;
    spec.name = "pd_probe";
    spec.key_size = 4;
    spec.value_size = 4;
    spec.max_entries = 1;
    auto fd = kernel::create_map(spec);
    if (!fd.ok()) return std::move(fd).error();
    return {};
  }();
  return kProbe;
}

}  // namespace

void require_bpf() {
  const Status& probe = bpf_probe();
  if (probe.ok()) return;
  const Error& err = probe.error();
  if (err.sys_errno == EPERM) {
    std::string reason = "the bpf syscall is not permitted here (" + err.message() +
                         "); run as root or with CAP_BPF and CAP_SYS_ADMIN";
    if (privileged_required()) {
      GTEST_FAIL() << reason << ". POLICYD_REQUIRE_PRIVILEGED=1: privileged tests must run.";
    }
    GTEST_SKIP() << reason;
  }
  GTEST_FAIL() << "the bpf syscall is permitted but failed: " << err.message();
}

void BpfTest::SetUp() { POLICYD_REQUIRE_BPF(); }

void BpffsTest::SetUp() {
  BpfTest::SetUp();
  if (IsSkipped() || HasFatalFailure()) return;
  Result<PrivateBpffs> fs = PrivateBpffs::create();
  ASSERT_TRUE(fs.ok()) << fs.error().message();
  bpffs_.emplace(std::move(fs).value());
}

}  // namespace policyd::test
