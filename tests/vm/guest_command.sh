#!/bin/bash
# Runs inside the guest of tests/vm/run.sh (as root): COMMAND's stdout on ttyS1 and stderr on
# ttyS2, which the runner streams; its exit status in /policyd-vm/status. Then the guest powers
# off, or reboots when COMMAND created $POLICYD_VM_REBOOT_FILE.
# usage: guest_command.sh chroot|systemd
set -uo pipefail

readonly IO=/policyd-vm
readonly MODE="$1"

exec </dev/null 1>/dev/ttyS1 2>/dev/ttyS2
stty -F /dev/ttyS1 raw -echo 115200
stty -F /dev/ttyS2 raw -echo 115200

export POLICYD_VM_BOOT POLICYD_VM_REBOOT_FILE="${IO}/reboot"
POLICYD_VM_BOOT="$(cat "${IO}/boots")"
rm -f "${POLICYD_VM_REBOOT_FILE}"

# Through pipes, as on the host: COMMAND's output is not a terminal (no pagers, no colours).
status=0
(
  # shellcheck disable=SC1091
  source "${IO}/command.sh"
) > >(cat) 2> >(cat >&2) || status=$?
wait

reboot=no
if [[ -e "${POLICYD_VM_REBOOT_FILE}" ]]; then
  if [[ "${MODE}" == systemd ]]; then
    reboot=yes
  else
    echo "vm: a reboot needs --systemd; ending the run" >&2
    status=125
  fi
fi
if [[ "${reboot}" == no ]]; then
  echo "${status}" >"${IO}/status"
fi
# The last close of a serial port waits until its output has left the guest.
exec 1>&- 2>&-
sync
if [[ "${MODE}" == systemd ]]; then
  if [[ "${reboot}" == yes ]]; then
    systemctl --no-block reboot
  else
    systemctl --force --force poweroff
  fi
fi
