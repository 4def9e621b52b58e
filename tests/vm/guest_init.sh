#!/bin/busybox sh
# shellcheck shell=dash
# /init of the initramfs that tests/vm/run.sh builds (busybox-static and the kernel's modules).
# Mounts the host's / read-only over 9p (tag "lower") under a writable overlay, the runner's
# share (tag "io") at /policyd-vm, the API filesystems and bpffs, then either chroots into it
# and runs the command (policyd_vm.mode=chroot) or switch_roots to systemd (mode=systemd),
# which runs the command from policyd-vm-command.service.
/bin/busybox --install -s /bin
export PATH=/bin

fail() {
  echo "policyd-vm init: $*" >&2
  sync
  poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

mode=chroot
# shellcheck disable=SC2013  # words, not lines
for arg in $(cat /proc/cmdline); do
  case "${arg}" in
    policyd_vm.mode=*) mode="${arg#*=}" ;;
  esac
done

while read -r module; do
  insmod "/modules/${module}.ko" || fail "insmod ${module}"
done </modules/order

p9='trans=virtio,version=9p2000.L,msize=524288'
mount -t 9p -o "${p9},cache=none" io /io || fail "mount io share"
boots=$(($(cat /io/boots) + 1))
echo "${boots}" >/io/boots
if [ "${boots}" -gt "$(cat /io/max_boots)" ]; then
  fail "booted ${boots} times; giving up"
fi

# The host's files do not change under a run: let the guest cache them.
mount -t 9p -o "${p9},ro,cache=loose" lower /lower || fail "mount the host's / over 9p"
if [ "${mode}" = systemd ]; then
  mount -t ext4 /dev/vda /scratch || fail "mount the scratch disk"
else
  mount -t tmpfs -o mode=0755 scratch /scratch || fail "mount tmpfs"
fi
mkdir -p /scratch/upper /scratch/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/scratch/upper,workdir=/scratch/work \
  /newroot || fail "mount the overlay"

r=/newroot
mount -t proc proc "${r}/proc"
mount -t sysfs sysfs "${r}/sys"
mount -t devtmpfs devtmpfs "${r}/dev"
mkdir -p "${r}/dev/pts" "${r}/dev/shm"
ln -sf /proc/self/fd "${r}/dev/fd"
ln -sf /proc/self/fd/0 "${r}/dev/stdin"
ln -sf /proc/self/fd/1 "${r}/dev/stdout"
ln -sf /proc/self/fd/2 "${r}/dev/stderr"
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts "${r}/dev/pts"
mount -t tmpfs -o mode=1777 shm "${r}/dev/shm"
mount -t tmpfs -o mode=0755 run "${r}/run"
# The guest's /tmp is private, but a command run from a directory under the host's /tmp (a
# clone in /tmp/x) must still see it: that top directory is bound from the overlay onto the
# fresh /tmp, writable like the rest of the overlay.
keep=""
[ -f /io/keep_dir ] && keep="$(cat /io/keep_dir)"
if [ -n "${keep}" ]; then
  mkdir -p /keep
  mount -o bind "${r}${keep}" /keep || fail "bind ${keep}"
fi
mount -t tmpfs -o mode=1777 tmp "${r}/tmp"
if [ -n "${keep}" ]; then
  mkdir -p "${r}${keep}"
  mount --move /keep "${r}${keep}" || fail "move ${keep} onto the private /tmp"
fi
mount -t bpf -o mode=0700 bpf "${r}/sys/fs/bpf" || fail "mount bpffs"
mount -t cgroup2 cgroup2 "${r}/sys/fs/cgroup" || fail "mount cgroup2"
mkdir -p "${r}/policyd-vm"
mount --move /io "${r}/policyd-vm" || fail "move the io share"
ip link set lo up

if [ "${mode}" = systemd ]; then
  # A target of its own: basic.target and the command, not every service this machine has
  # enabled for multi-user.target (databases, gettys, timers) that TCG would crawl through.
  etc="${r}/etc/systemd/system"
  mkdir -p "${etc}/policyd-vm.target.wants"
  cat >"${etc}/policyd-vm.target" <<UNIT
[Unit]
Description=tests/vm/run.sh guest
Requires=basic.target
After=basic.target
AllowIsolate=yes
UNIT
  cat >"${etc}/policyd-vm-command.service" <<UNIT
[Unit]
Description=The command of tests/vm/run.sh
After=basic.target

[Service]
Type=oneshot
ExecStart=/bin/bash /policyd-vm/guest_command.sh systemd
StandardInput=null
StandardOutput=journal+console
TimeoutStartSec=infinity
UNIT
  ln -sf ../policyd-vm-command.service "${etc}/policyd-vm.target.wants/"
  ln -sf policyd-vm.target "${etc}/default.target"
  umount /proc/sys/fs/binfmt_misc 2>/dev/null
  umount /sys /proc
  exec switch_root "${r}" /lib/systemd/systemd
fi

chroot "${r}" /bin/bash /policyd-vm/guest_command.sh chroot
sync
poweroff -f
