#!/usr/bin/env bash
# Idle memory of policyd on the example config (config/policyd.yaml), the figure of the issue's
# "idle RSS" target: starts the daemon RUNS times on a private socket, pin_dir and state_dir
# (never the example's /run/policyd or /sys/fs/bpf/policyd), waits until it answers and then
# SETTLE seconds, reads /proc/<pid>/status and smaps_rollup, stops it, and prints every run
# and the medians. Optional PUSHES: push config/examples/acl-v1.yaml / acl-v2.yaml that many
# times first (alternating), to see what the first commits leave behind.
# Usage (root): tests/bench/idle_rss.sh [BUILD_DIR] ; env RUNS=5 SETTLE=2 PUSHES=0
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD="${1:-${REPO}/build}"
RUNS="${RUNS:-5}"
SETTLE="${SETTLE:-2}"
PUSHES="${PUSHES:-0}"
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
WORK="$(mktemp -d /tmp/policyd-idle-rss.XXXXXX)"
PIN="/sys/fs/bpf/policyd-idle-rss-$$"
cleanup() { rm -rf "${WORK}" "${PIN}"; }
trap cleanup EXIT
sed -e "s|^  socket: .*|  socket: ${WORK}/policyd.sock|" \
    -e "s|^pin_dir: .*|pin_dir: ${PIN}|" \
    -e "s|^state_dir: .*|state_dir: ${WORK}/state|" \
    -e "s|^log_level: .*|log_level: warn|" \
    "${REPO}/config/policyd.yaml" > "${WORK}/policyd.yaml"
field() { awk -v k="$1:" '$1 == k {print $2}' "$2"; }
rows=()
for ((i = 1; i <= RUNS; i++)); do
  rm -rf "${WORK}/state" "${PIN}"
  "${BUILD}/daemon/policyd" --config "${WORK}/policyd.yaml" 2> "${WORK}/log" &
  pid=$!
  for _ in $(seq 100); do
    "${BUILD}/daemon/policyctl" --socket "${WORK}/policyd.sock" status > /dev/null 2>&1 && break
    sleep 0.1
  done
  for ((p = 0; p < PUSHES; p++)); do
    f="${REPO}/config/examples/acl-v$((p % 2 + 1)).yaml"
    "${BUILD}/daemon/policyctl" --socket "${WORK}/policyd.sock" push "${f}" > /dev/null
  done
  sleep "${SETTLE}"
  st="/proc/${pid}/status"
  row="$(field VmRSS "${st}") $(field RssAnon "${st}") $(field RssFile "${st}") $(field Threads "${st}") $(awk '$1 == "Private_Dirty:" {print $2}' "/proc/${pid}/smaps_rollup")"
  rows+=("${row}")
  echo "run ${i}: VmRSS RssAnon RssFile (kB) Threads Private_Dirty(kB): ${row}"
  kill -TERM "${pid}"
  wait "${pid}" || true
done
printf '%s\n' "${rows[@]}" | /usr/bin/python3 -c '
import sys, statistics
rows = [list(map(int, l.split())) for l in sys.stdin if l.strip()]
names = ["VmRSS", "RssAnon", "RssFile", "Threads", "Private_Dirty"]
med = [statistics.median(c) for c in zip(*rows)]
print("median of %d: " % len(rows) + ", ".join(
    "%s %s" % (n, ("%.1f MB" % (m / 1024)) if n != "Threads" else int(m)) for n, m in zip(names, med)))
'
