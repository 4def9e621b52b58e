#!/usr/bin/env bash
# policyd_grpc_bench --expedited sets /sys/kernel/rcu_expedited to 1 for its run and must put
# the previous value back however it ends: after a normal run, and when SIGTERM or SIGINT ends
# it half way. Usage: expedited_restore_test.sh <policyd_grpc_bench>. Exit 77: not root or the
# file is not writable (a failure under POLICYD_REQUIRE_PRIVILEGED=1).
set -u
bench=$1
knob=/sys/kernel/rcu_expedited

skip() {
  if [[ ${POLICYD_REQUIRE_PRIVILEGED:-0} == 1 ]]; then
    echo "FAIL: $1 (POLICYD_REQUIRE_PRIVILEGED=1)"
    exit 1
  fi
  echo "SKIP: $1"
  exit 77
}
[[ $(id -u) == 0 && -w $knob ]] || skip "$knob is not writable here"

original=$(cat "$knob")
work=$(mktemp -d /tmp/policyd-expedited-test-XXXXXX)
cleanup() {
  echo "$original" >"$knob"  # whatever happened here, the machine keeps its setting
  # A bench ended by a signal leaves its private bpffs mounted under TMPDIR.
  grep " bpf " /proc/mounts | awk '{print $2}' | grep "^$work/" | xargs -r -n1 umount -l
  rm -rf "$work"
}
trap cleanup EXIT
export TMPDIR=$work
# Start from 0 so that "set" and "restored" can be told apart.
echo 0 >"$knob"
failures=0
fail() {
  echo "FAIL: $1"
  failures=$((failures + 1))
}

# 1. A run to its end.
"$bench" --quick --expedited --samples=1 --rounds=1 --sequential=2 >"$work/run.log" 2>&1
rc=$?
if [[ $rc == 77 ]]; then skip "the bench skipped: $(tail -1 "$work/run.log")"; fi
[[ $rc == 0 ]] || fail "the bench exited $rc: $(tail -5 "$work/run.log")"
grep -q "expedited (/sys/kernel/rcu_expedited 0 -> 1" "$work/run.log" ||
  fail "the bench did not say it ran expedited"
[[ $(cat "$knob") == 0 ]] || fail "$knob is $(cat "$knob") after a normal run, expected 0"

# 2. Ended by a signal while it runs.
for sig in TERM INT; do
  # Enough samples that the run lasts seconds: the signal must land in the middle of it.
  "$bench" --expedited --samples=1001 >"$work/$sig.log" 2>&1 &
  pid=$!
  set_seen=0
  for _ in $(seq 1 400); do
    if [[ $(cat "$knob") == 1 ]]; then
      set_seen=1
      break
    fi
    sleep 0.025
  done
  [[ $set_seen == 1 ]] || fail "SIG$sig run: $knob never became 1"
  sleep 0.3  # into the run (the daemon is starting or measuring)
  kill -s "$sig" "$pid"
  wait "$pid"
  rc=$?
  [[ $rc -gt 128 ]] || fail "SIG$sig run: exit code $rc, expected death by the signal"
  [[ $(cat "$knob") == 0 ]] || fail "$knob is $(cat "$knob") after SIG$sig, expected 0"
done

if [[ $failures == 0 ]]; then
  echo "PASS: $knob restored after a normal run, SIGTERM and SIGINT"
  exit 0
fi
exit 1
