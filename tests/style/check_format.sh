#!/usr/bin/env bash
# Fails when a tracked source file differs from what clang-format makes of it.
#
#   tests/style/check_format.sh [--fix]
#
# C++ in daemon/, tests/ and bpf/loader/ follows the top-level .clang-format; BPF C (every
# *.bpf.c, and the headers under bpf/ outside bpf/loader/) follows bpf/.clang-format. Every
# difference is printed as clang-format's own file:line:column warning. --fix rewrites the files.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly REPO_ROOT
readonly CLANG_FORMAT="${CLANG_FORMAT:-clang-format}"

fail() {
  echo "check_format: $*" >&2
  exit 1
}

# tracked_sources PATHSPEC...: the tracked files matching the pathspecs, one per line.
tracked_sources() {
  git -C "${REPO_ROOT}" ls-files -- "$@"
}

cxx_files() {
  tracked_sources 'daemon/*.cpp' 'daemon/*.h' 'tests/*.cpp' 'tests/*.h' \
    'bpf/loader/*.cpp' 'bpf/loader/*.h' | grep -v '\.bpf\.c$' || true
}

bpf_files() {
  {
    tracked_sources '*.bpf.c'
    tracked_sources 'bpf/*.h' | grep -v '^bpf/loader/' || true
  } | sort -u
}

# check STYLE_FILE FILE...: prints clang-format's warnings, returns 1 when there are any.
check() {
  local style="$1"
  shift
  [[ $# -gt 0 ]] || return 0
  local out
  out="$(cd "${REPO_ROOT}" && "${CLANG_FORMAT}" --dry-run --style="file:${style}" "$@" 2>&1)"
  if grep -q 'warning:' <<<"${out}"; then
    grep 'warning:' <<<"${out}" >&2
    return 1
  fi
}

fix() {
  local style="$1"
  shift
  [[ $# -gt 0 ]] || return 0
  (cd "${REPO_ROOT}" && "${CLANG_FORMAT}" -i --style="file:${style}" "$@")
}

main() {
  command -v "${CLANG_FORMAT}" >/dev/null || fail "${CLANG_FORMAT} not found (apt-get install clang-format)"
  git -C "${REPO_ROOT}" rev-parse --git-dir >/dev/null 2>&1 ||
    fail "${REPO_ROOT} is not a git checkout; the check reads the tracked files"
  local -a cxx bpf
  mapfile -t cxx < <(cxx_files)
  mapfile -t bpf < <(bpf_files)
  if [[ "${1:-}" == "--fix" ]]; then
    fix .clang-format "${cxx[@]}"
    fix bpf/.clang-format "${bpf[@]}"
    return
  fi
  local status=0
  check .clang-format "${cxx[@]}" || status=1
  check bpf/.clang-format "${bpf[@]}" || status=1
  if [[ ${status} -ne 0 ]]; then
    fail "files differ from clang-format (see above); tests/style/check_format.sh --fix rewrites them"
  fi
  echo "check_format: ${#cxx[@]} C++ and ${#bpf[@]} BPF C files match clang-format"
}

main "$@"
