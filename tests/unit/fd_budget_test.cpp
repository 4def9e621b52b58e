// The fd budget without the kernel's maps: UniqueFd's count of owned descriptors, and
// reserve_fds() against a soft RLIMIT_NOFILE lowered in this process (each test runs in its
// own process under ctest).
#include "core/fd_budget.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <optional>
#include <string>
#include <vector>

#include "kernel/unique_fd.h"

namespace policyd::core {
namespace {

kernel::UniqueFd open_null() { return kernel::UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC)); }

// Lowers the soft limit to `soft` for the test's lifetime.
class SoftLimit {
 public:
  explicit SoftLimit(rlim_t soft) {
    EXPECT_EQ(::getrlimit(RLIMIT_NOFILE, &saved_), 0);
    rlimit low = saved_;
    low.rlim_cur = soft;
    EXPECT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  }
  ~SoftLimit() { (void)::setrlimit(RLIMIT_NOFILE, &saved_); }
  SoftLimit(const SoftLimit&) = delete;
  SoftLimit& operator=(const SoftLimit&) = delete;

 private:
  rlimit saved_{};
};

TEST(UniqueFdCount, FollowsOpenMoveResetAndRelease) {
  const size_t base = kernel::UniqueFd::owned_count();
  {
    kernel::UniqueFd a = open_null();
    ASSERT_TRUE(a.valid());
    EXPECT_EQ(kernel::UniqueFd::owned_count(), base + 1);
    kernel::UniqueFd b = std::move(a);  // a move owns nothing more
    EXPECT_EQ(kernel::UniqueFd::owned_count(), base + 1);
    kernel::UniqueFd c = open_null();
    c = std::move(b);  // closes c's own fd
    EXPECT_EQ(kernel::UniqueFd::owned_count(), base + 1);
    c.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    EXPECT_EQ(kernel::UniqueFd::owned_count(), base + 1);
    const int raw = c.release();  // handed to someone else: no longer policyd's
    EXPECT_EQ(kernel::UniqueFd::owned_count(), base);
    kernel::UniqueFd back(raw);
    EXPECT_EQ(kernel::UniqueFd::owned_count(), base + 1);
  }
  EXPECT_EQ(kernel::UniqueFd::owned_count(), base);
}

TEST(FdBudget, G6_RefusesWhatDoesNotFitNamingNeedRemainderAndLimit) {
  SoftLimit limit(256);
  Result<FdReservation> fits = reserve_fds(100, "this generation");
  EXPECT_TRUE(fits.ok()) << fits.error().message();
  Result<FdReservation> too_many = reserve_fds(300, "generation \"big\"");
  ASSERT_FALSE(too_many.ok());
  EXPECT_EQ(too_many.error().code, ErrorCode::kResourceExhausted);
  const std::string msg = too_many.error().message();
  EXPECT_NE(msg.find("generation \"big\" needs 300 new inner-map fds; "), std::string::npos) << msg;
  EXPECT_NE(msg.find(" of RLIMIT_NOFILE 256"), std::string::npos) << msg;
  EXPECT_NE(msg.find("LimitNOFILE="), std::string::npos) << msg;
}

TEST(FdBudget, G6_ConcurrentReservationsCountEachOther) {
  SoftLimit limit(256);
  std::optional<Result<FdReservation>> first(reserve_fds(150, "first"));
  ASSERT_TRUE(first->ok());
  // 150 promised and not yet opened: another 150 do not fit in 256.
  EXPECT_FALSE(reserve_fds(150, "second").ok());
  first.reset();  // the first build finished (or failed): its promise is released
  EXPECT_TRUE(reserve_fds(150, "second").ok());
}

TEST(FdBudget, G6_OpenDescriptorsCountAgainstTheLimit) {
  SoftLimit limit(256);
  EXPECT_TRUE(reserve_fds(150, "before").ok());
  std::vector<kernel::UniqueFd> held;
  for (int i = 0; i < 100; ++i) held.push_back(open_null());
  EXPECT_FALSE(reserve_fds(150, "after").ok());
}

// The API's connections are not UniqueFds: the work that only uses the estimate (the pool's
// refill) keeps api.max_connections of them free, at most a quarter of the soft limit.
TEST(FdBudget, G6_TheConnectionReserveKeepsSpareWorkOffTheConnectionsFds) {
  SoftLimit limit(1024);
  set_connection_fd_reserve(0);
  EXPECT_TRUE(reserve_spare_fds(450, 0).ok());
  set_connection_fd_reserve(600);  // counted as 256: 64 + 256 + 450 > 1024 - 256 kept free
  EXPECT_FALSE(reserve_spare_fds(450, 0).ok());
  EXPECT_TRUE(reserve_spare_fds(400, 0).ok()) << "more than a quarter of the limit was kept";
  set_connection_fd_reserve(0);
}

TEST(FdBudget, EmfileIsNamedAsResourceExhaustion) {
  Error e = name_fd_exhaustion(sys_error(EMFILE, "create hash map \"big\""));
  EXPECT_EQ(e.code, ErrorCode::kResourceExhausted);
  EXPECT_NE(e.message().find("RLIMIT_NOFILE"), std::string::npos) << e.message();
  // Any other error is returned unchanged.
  Error other = name_fd_exhaustion(sys_error(EIO, "create hash map \"big\""));
  EXPECT_EQ(other.code, ErrorCode::kInternal);
  EXPECT_EQ(other.context, "create hash map \"big\"");
}

}  // namespace
}  // namespace policyd::core
