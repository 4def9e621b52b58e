#!/usr/bin/env bash
# Builds the libFuzzer targets (clang-14, -fsanitize=fuzzer,address,undefined) in their own
# build directory and runs each for SECONDS, starting from its seed corpus in
# tests/fuzz/corpus/<target>/ (read only: what a run finds goes to a scratch corpus).
# Prints `fuzz: <target> ok (<executions> execs)` per target, or the crash (the reproducer is
# kept as build-fuzz/crashes/<target>/crash-*), and exits non-zero if any target failed.
# Targets run JOBS at a time (default: the number of CPUs), each for SECONDS of wall time.
# Usage: tests/fuzz/run.sh SECONDS [TARGET...]   (env BUILD_DIR=build-fuzz, JOBS)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
SECONDS_EACH="${1:?usage: tests/fuzz/run.sh SECONDS [TARGET...]}"
shift
BUILD="${BUILD_DIR:-${REPO}/build-fuzz}"
JOBS="${JOBS:-$(nproc)}"
ALL=(config_fuzz policy_file_fuzz schema_fuzz push_fuzz push_stream_fuzz state_v1_fuzz state_db_fuzz)
if [[ $# -gt 0 ]]; then TARGETS=("$@"); else TARGETS=("${ALL[@]}"); fi

launcher=()
command -v ccache > /dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
mkdir -p "${BUILD}"
cmake -S "${REPO}" -B "${BUILD}" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 "${launcher[@]}" \
  -DPOLICYD_FUZZ=ON -DPOLICYD_BUILD_TESTS=OFF > "${BUILD}/configure.log" 2>&1 ||
  { cat "${BUILD}/configure.log"; exit 1; }
cmake --build "${BUILD}" --target "${TARGETS[@]}"

# run_target T: runs T, then writes its verdict line to ${BUILD}/T.verdict and returns its status.
run_target() {
  local t="$1"
  local seeds="${REPO}/tests/fuzz/corpus/${t}"
  local work="${BUILD}/corpus/${t}"
  local crashes="${BUILD}/crashes/${t}"
  # Scratch files of the target (state dirs) live in the build tree and go with each run, even
  # one that crashed before its own clean-up.
  local scratch="${BUILD}/tmp/${t}"
  rm -rf "${scratch}"
  mkdir -p "${work}" "${crashes}" "${scratch}"
  local log="${BUILD}/${t}.log"
  local dirs=("${work}")
  [[ -d "${seeds}" ]] && dirs+=("${seeds}")
  local rc=0
  # Leak checks stay on (ASan's default); -rss_limit_mb bounds a target that grows.
  TMPDIR="${scratch}" "${BUILD}/tests/fuzz/${t}" -max_total_time="${SECONDS_EACH}" \
    -print_final_stats=1 -rss_limit_mb=2048 -timeout=10 -artifact_prefix="${crashes}/" \
    "${dirs[@]}" > "${log}" 2>&1 || rc=$?
  rm -rf "${scratch}"
  local execs
  execs="$(awk '/stat::number_of_executed_units/ {print $NF}' "${log}")"
  if [[ ${rc} -eq 0 ]]; then
    echo "fuzz: ${t} ok (${execs:-?} execs)" > "${BUILD}/${t}.verdict"
  else
    {
      echo "fuzz: ${t} FAILED (exit ${rc}); reproducer in ${crashes}/; the end of its log:"
      tail -40 "${log}"
    } > "${BUILD}/${t}.verdict"
  fi
  return "${rc}"
}

pids=()
for t in "${TARGETS[@]}"; do
  while [[ $(jobs -rp | wc -l) -ge ${JOBS} ]]; do sleep 0.2; done
  run_target "${t}" &
  pids+=($!)
done
failed=0
for i in "${!TARGETS[@]}"; do
  wait "${pids[$i]}" || failed=1
  cat "${BUILD}/${TARGETS[$i]}.verdict"
done
exit "${failed}"
