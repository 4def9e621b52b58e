#!/usr/bin/env bash
# Builds the libFuzzer targets (clang-14, -fsanitize=fuzzer,address,undefined) in their own
# build directory and runs each for SECONDS, starting from its seed corpus in
# tests/fuzz/corpus/<target>/ (read only: what a run finds goes to a scratch corpus).
# Prints `fuzz: <target> ok (<executions> execs)` per target, or the crash (the reproducer is
# kept as build-fuzz/crashes/<target>/crash-*), and exits non-zero if any target failed.
# Usage: tests/fuzz/run.sh SECONDS [TARGET...]   (env BUILD_DIR=build-fuzz)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
SECONDS_EACH="${1:?usage: tests/fuzz/run.sh SECONDS [TARGET...]}"
shift
BUILD="${BUILD_DIR:-${REPO}/build-fuzz}"
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

failed=0
for t in "${TARGETS[@]}"; do
  seeds="${REPO}/tests/fuzz/corpus/${t}"
  work="${BUILD}/corpus/${t}"
  crashes="${BUILD}/crashes/${t}"
  # Scratch files of the target (state dirs) live in the build tree and go with each run, even
  # one that crashed before its own clean-up.
  scratch="${BUILD}/tmp/${t}"
  rm -rf "${scratch}"
  mkdir -p "${work}" "${crashes}" "${scratch}"
  log="${BUILD}/${t}.log"
  dirs=("${work}")
  [[ -d "${seeds}" ]] && dirs+=("${seeds}")
  set +e
  # Leak checks stay on (ASan's default); -rss_limit_mb bounds a target that grows.
  TMPDIR="${scratch}" "${BUILD}/tests/fuzz/${t}" -max_total_time="${SECONDS_EACH}" -print_final_stats=1 \
    -rss_limit_mb=2048 -timeout=10 -artifact_prefix="${crashes}/" "${dirs[@]}" > "${log}" 2>&1
  rc=$?
  set -e
  rm -rf "${scratch}"
  execs="$(awk '/stat::number_of_executed_units/ {print $NF}' "${log}")"
  if [[ ${rc} -eq 0 ]]; then
    echo "fuzz: ${t} ok (${execs:-?} execs)"
  else
    failed=1
    echo "fuzz: ${t} FAILED (exit ${rc}); reproducer in ${crashes}/; the end of its log:"
    tail -40 "${log}"
  fi
done
exit "${failed}"
