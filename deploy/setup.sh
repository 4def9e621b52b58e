#!/usr/bin/env bash
# Sets up a Debian 12 machine to build policyd, then tests it or runs it.
#
#   deploy/setup.sh test          install, check formatting, build (warnings as errors), run every
#                                 ctest suite (the layer rules are a unit test), the fuzz targets
#                                 for FUZZ_SECONDS (30) each, the kernel and e2e suites again on
#                                 Debian 12's 6.1 kernel, then the suites under ASan and UBSan
#   deploy/setup.sh run [CONFIG]  install, build, exec the daemon (default config/policyd.yaml)
#
#   POLICYD_SANITIZE=address,undefined deploy/setup.sh test   (or =thread)
#                                 only the unit, kernel, e2e and install suites (thread: unit)
#                                 built with those sanitizers in their own tree
#                                 (build-sanitize-<list>/, build/ is untouched); a report from any
#                                 process, the daemons the tests start included, fails the run
#
# Idempotent: packages are installed only when missing, the build tree is reused, and bpffs
# is mounted only when it is not already. Needs root (apt, mount, and the privileged tests).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
readonly BUILD_DIR="${REPO_ROOT}/build"
# POLICYD_SANITIZE: run only the suites under these sanitizers (a -fsanitize= list).
readonly SANITIZE="${POLICYD_SANITIZE:-}"
# What `test` runs after the VM suites.
readonly CI_SANITIZE=address,undefined
readonly BPFFS=/sys/fs/bpf
# Seconds each fuzz target runs in `test` (CI: 30; tests/fuzz/run.sh SECONDS runs them by hand).
readonly FUZZ_SECONDS="${FUZZ_SECONDS:-30}"

# Everything the build, the tests and the daemon need from Debian 12.
readonly PACKAGES=(
  build-essential cmake ninja-build pkg-config
  clang-14 llvm-14 libclang-rt-14-dev libbpf-dev bpftool libelf-dev zlib1g-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libssl-dev
  libspdlog-dev libfmt-dev libyaml-cpp-dev libboost-dev libsystemd-dev prometheus-cpp-dev
  libsqlite3-dev sqlite3
  libgtest-dev libgmock-dev libbenchmark-dev
  iproute2 openssl clang-format
  systemd dpkg-dev file
  qemu-system-x86 busybox-static
)

usage() {
  echo "usage: $0 test | run [CONFIG]" >&2
  exit 2
}

log() { echo "setup: $*" >&2; }

require_root() {
  if [[ ${EUID} -ne 0 ]]; then
    log "must run as root (apt-get, mounting bpffs, privileged BPF tests)"
    exit 1
  fi
}

is_installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

install_packages() {
  local missing=() pkg
  for pkg in "${PACKAGES[@]}"; do
    is_installed "${pkg}" || missing+=("${pkg}")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    log "all ${#PACKAGES[@]} packages already installed"
    return
  fi
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
}

mount_bpffs() {
  if mountpoint -q "${BPFFS}"; then
    return
  fi
  log "mounting bpffs at ${BPFFS}"
  mkdir -p "${BPFFS}"
  mount -t bpf bpf "${BPFFS}"
}

# configure_and_build DIR [extra cmake args...]
configure_and_build() {
  local dir="$1"
  shift
  # A tree configured with another generator cannot be reconfigured with Ninja; start over.
  if [[ -f "${dir}/CMakeCache.txt" ]] &&
    ! grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$' "${dir}/CMakeCache.txt"; then
    log "${dir} was configured with another generator; reconfiguring from scratch"
    rm -rf "${dir}/CMakeCache.txt" "${dir}/CMakeFiles"
  fi
  cmake -S "${REPO_ROOT}" -B "${dir}" -G Ninja "$@"
  cmake --build "${dir}" --parallel
}

# The tree of a sanitizer list: build-sanitize-address-undefined for address,undefined.
sanitize_dir() { echo "${REPO_ROOT}/build-sanitize-${1//,/-}"; }

configure_and_build_sanitized() {
  configure_and_build "$(sanitize_dir "$1")" -DPOLICYD_WERROR=ON -DPOLICYD_SANITIZE="$1"
}

# The kernel and e2e suites on Debian 12's own kernel (6.1), in a qemu guest that sees this
# machine's files (tests/vm/run.sh; the kernel package is cached outside the tree). The host
# run above covers the host kernel and the system label (the unit under systemd, also in a VM).
# Not run in the VM, each with its reason (they run on the host like every test):
# - FdBudgetLowLimitTest.G6_RestartThatCannotAdoptEverySlot...: under qemu TCG the restart under
#   160 fds does not reach its refusal within the fixture's start-up wait (seen twice on 6.1,
#   not yet understood); the host run proves the refusal. Tracked in the issue's closing note.
# - HashCrashLoopTest.G8_G9_SurvivesSigkillsAt4096SlotsOfAHashOuterMap: 4,096 slots need more
#   fds than the guest's hard limit of 4,096, and under TCG its eight restarts at that scale
#   take minutes; it is about scale, which the host run covers (the 6.1 crash loop at 3 slots,
#   G5_G8_SurvivesFiftySigkills..., runs in the VM).
# - ConnectionFloodTest.G6_AReadersTwoThousandConnectionsDoNotDelayAWriter...: its 2 s bound is
#   a host-speed target; under TCG the accept loop takes about 400 connections a second, so the
#   writer's connection waits ~5 s behind the 2,000 in the listen queue (seen on 6.1).
# - IdentityTest.AReusedFdNumberNeverLendsAWritersRightsToAReadersCalls: 10,000 connections
#   (2.5 s on the host, many minutes at TCG's accept rate) to check policyd's own code, which
#   does not depend on the kernel.
# - LifecycleTest.G4_TwoHundredSigterms...: 200 daemon starts (55 s on the host; one start
#   alone takes seconds under TCG).
# - scale_bench_smoke and soak_smoke: a benchmark's figures under TCG say nothing, and the soak
#   is a minute of host-speed load; what they touch on 6.1 (fills, exact counts under churn) is
#   the crash loop's and the fill tests' job there (64 s and 70 s of the VM run).
readonly VM_EXCLUDED_TESTS='^(FdBudgetLowLimitTest\.G6_RestartThatCannotAdoptEverySlotRefusesToStartAndNamesTheLimit|HashCrashLoopTest\.G8_G9_SurvivesSigkillsAt4096SlotsOfAHashOuterMap|ConnectionFloodTest\.G6_AReadersTwoThousandConnectionsDoNotDelayAWriterNorFloodTheLog|IdentityTest\.AReusedFdNumberNeverLendsAWritersRightsToAReadersCalls|LifecycleTest\.G4_TwoHundredSigtermsUnderPushLoadAnswerEveryPushAndExitZeroWithinFiveSeconds|scale_bench_smoke|soak_smoke)$'

# Not run under the sanitizers (they run in the normal build on the host and in the VM):
# - SystemdTest.WatchdogPingsStopWhileTheCommitterIsStuck stops every daemon thread but the
#   event loop's at an arbitrary point (ptrace). Under ASan the event loop then stalls in 1 run
#   of 2 (it logs nothing until the others run again), presumably on a lock of the sanitizer's
#   runtime that a stopped thread holds; what it checks is not about memory.
readonly SANITIZE_EXCLUDED_TESTS='^(SystemdTest\.WatchdogPingsStopWhileTheCommitterIsStuck)$'

run_vm_suites() {
  log "kernel and e2e suites on Debian 12's 6.1 kernel (tests/vm/run.sh)"
  "${REPO_ROOT}/tests/vm/run.sh" --kernel 6.1 --timeout 2700 -- \
    env POLICYD_REQUIRE_PRIVILEGED=1 ctest --test-dir "${BUILD_DIR}" -L '^(kernel|e2e)$' \
    -E "${VM_EXCLUDED_TESTS}" --output-on-failure
}

# The ctest suites on the host, built with the sanitizers in $1 (the tree is built first, or
# again: a no-op when `test` built it already). Reports go to files (log_path), so that a daemon
# a test started cannot lose one in a pipe; any file there fails the run.
run_sanitized_suites() {
  local list="$1"
  local dir
  dir="$(sanitize_dir "${list}")"
  configure_and_build_sanitized "${list}"
  mount_bpffs
  local reports="${dir}/sanitizer-reports"
  rm -rf "${reports}"
  mkdir -p "${reports}"
  chmod 1777 "${reports}" # daemons that tests start as another uid write here too
  local common="log_path=${reports}/report:log_exe_name=1:print_stacktrace=1"
  # ThreadSanitizer runs the unit suite; the others run unit, kernel, e2e and install.
  local labels='^(unit|kernel|e2e|install)$'
  [[ "${list}" == *thread* ]] && labels='^unit$'
  log "the ${labels} suites under ${list} (${dir})"
  local rc=0
  ASAN_OPTIONS="${common}:detect_leaks=1:strict_string_checks=1" \
    LSAN_OPTIONS="${common}:suppressions=${REPO_ROOT}/tests/sanitize/lsan.supp" \
    UBSAN_OPTIONS="${common}:halt_on_error=1" \
    TSAN_OPTIONS="${common}:halt_on_error=1:suppressions=${REPO_ROOT}/tests/sanitize/tsan.supp" \
    POLICYD_REQUIRE_PRIVILEGED=1 ctest --test-dir "${dir}" -L "${labels}" --parallel 2 \
    -E "${SANITIZE_EXCLUDED_TESTS}" --output-on-failure || rc=$?
  if compgen -G "${reports}/report*" > /dev/null; then
    log "sanitizer reports (${list}):"
    head -c 200000 "${reports}"/report*
    rc=1
  fi
  if [[ ${rc} -ne 0 ]]; then
    log "the suites under ${list} failed"
    exit "${rc}"
  fi
  log "the suites under ${list}: no failure, no report"
}

cmd_test() {
  # Formatting first: it takes a second and fails with every differing file:line.
  bash "${REPO_ROOT}/tests/style/check_format.sh"
  if [[ -n "${SANITIZE}" ]]; then
    run_sanitized_suites "${SANITIZE}"
    return
  fi
  configure_and_build "${BUILD_DIR}" -DPOLICYD_WERROR=ON
  mount_bpffs
  # CI must run the privileged suites, never skip them.
  # Two at a time: kernel and e2e tests are RUN_SERIAL and still run alone.
  POLICYD_REQUIRE_PRIVILEGED=1 ctest --test-dir "${BUILD_DIR}" --parallel 2 --output-on-failure
  log "fuzz targets, ${FUZZ_SECONDS} s each (tests/fuzz/run.sh; clang-14, ASan + UBSan)"
  bash "${REPO_ROOT}/tests/fuzz/run.sh" "${FUZZ_SECONDS}"
  # The sanitizer tree builds while the VM runs, at the lowest priority: the guest's threads
  # come first, and the build takes what they leave.
  local sanitized_log="${BUILD_DIR}/sanitize-build.log"
  log "building the ${CI_SANITIZE} tree in the background (${sanitized_log})"
  nice -n 19 bash "${BASH_SOURCE[0]}" build-sanitized "${CI_SANITIZE}" > "${sanitized_log}" 2>&1 &
  local builder=$!
  local vm_rc=0
  run_vm_suites || vm_rc=$?
  local build_rc=0
  wait "${builder}" || build_rc=$?
  [[ ${vm_rc} -eq 0 ]] || exit "${vm_rc}"
  if [[ ${build_rc} -ne 0 ]]; then
    tail -50 "${sanitized_log}"
    log "the ${CI_SANITIZE} build failed"
    exit "${build_rc}"
  fi
  run_sanitized_suites "${CI_SANITIZE}"
}

cmd_run() {
  # A CONFIG given on the command line is relative to the caller's directory.
  local config="${1:-${REPO_ROOT}/config/policyd.yaml}"
  configure_and_build "${BUILD_DIR}"
  mount_bpffs
  local daemon="${BUILD_DIR}/daemon/policyd"
  log "starting ${daemon} --config ${config} (Ctrl-C stops it; pinned maps stay)"
  exec "${daemon}" --config "${config}"
}

main() {
  [[ $# -ge 1 ]] || usage
  local cmd="$1"
  shift
  case "${cmd}" in
    test)
      [[ $# -eq 0 ]] || usage
      require_root
      install_packages
      cmd_test
      ;;
    build-sanitized)
      # Internal: `test` builds the sanitizer tree with this in the background.
      [[ $# -eq 1 ]] || usage
      configure_and_build_sanitized "$1"
      ;;
    run)
      [[ $# -le 1 ]] || usage
      require_root
      install_packages
      cmd_run "$@"
      ;;
    *) usage ;;
  esac
}

main "$@"
