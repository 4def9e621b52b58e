#!/usr/bin/env bash
# Runs one command on another kernel, in a throwaway qemu VM that sees this machine's files.
#
#   tests/vm/run.sh [--kernel 6.1|host] [--systemd] [--timeout SEC] -- COMMAND [ARG...]
#
#   --kernel 6.1   (default) the newest linux-image-6.1.0-*-amd64 that apt knows, Debian 12's
#                  own kernel, booted under qemu-system-x86_64 (TCG: no KVM is needed).
#   --kernel host  run COMMAND right here, on the running kernel; nothing is booted.
#   --systemd      boot systemd as PID 1 and run COMMAND from a oneshot unit after
#                  multi-user.target. Without it, a busybox init chroots into the same tree.
#   --timeout SEC  power the VM off after SEC seconds (exit status 124).
#
# The guest mounts this machine's / read-only over 9p, with a writable overlay on top (tmpfs,
# or under --systemd an ext4 scratch disk so that a guest reboot keeps what was written) and a
# private /tmp, mounts bpffs at /sys/fs/bpf and loads veth, cls_bpf and sch_ingress. So the
# binaries built here run there unchanged. COMMAND runs as root, in the current directory's
# path, with this shell's exported environment; its stdout and stderr stream to the runner's
# stdout and stderr, and the runner exits with COMMAND's status. Everything the runner itself
# says goes to stderr; the guest's console is kept in a log and shown when the guest fails.
#
# Under --systemd, COMMAND may ask for a guest reboot: it creates "$POLICYD_VM_REBOOT_FILE" and
# exits; the guest reboots (the overlay survives) and COMMAND runs again with POLICYD_VM_BOOT
# one higher (it is 1 on the first boot).
#
# Environment: POLICYD_VM_CACHE (default /var/cache/policyd-vm) holds the kernel package and
# the initramfs, never the repository. POLICYD_VM_MEM (MiB, default 3072), POLICYD_VM_CPUS
# (default 2), POLICYD_VM_VERBOSE=1 copies the guest console to stderr when the guest stops.
set -euo pipefail

readonly VM_CACHE="${POLICYD_VM_CACHE:-/var/cache/policyd-vm}"
readonly VM_MEM="${POLICYD_VM_MEM:-3072}"
readonly VM_CPUS="${POLICYD_VM_CPUS:-2}"
readonly MAX_BOOTS=4
# Loaded in the guest in dependency order (from each module's depends=): the 9p root and its
# overlay, the scratch disk, and what the network tests need.
# crc32c_generic is a soft dependency of ext4 (no depends= names it).
readonly GUEST_MODULES=(
  virtio_pci 9pnet_virtio 9p overlay virtio_blk crc32c_generic ext4 veth cls_bpf sch_ingress
)
readonly HOST_PACKAGES=(qemu-system-x86 busybox-static)

log() { echo "vm: $*" >&2; }
die() {
  log "error: $*"
  exit 125
}

usage() {
  echo "usage: $0 [--kernel 6.1|host] [--systemd] [--timeout SEC] -- COMMAND [ARG...]" >&2
  exit 2
}

is_installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

# A fresh machine (CI) has neither qemu nor busybox-static: install them, quietly.
ensure_host_packages() {
  local missing=() pkg
  for pkg in "${HOST_PACKAGES[@]}"; do
    is_installed "${pkg}" || missing+=("${pkg}")
  done
  [[ ${#missing[@]} -eq 0 ]] && return
  [[ ${EUID} -eq 0 ]] || die "packages ${missing[*]} are missing and only root can install them"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
    { apt-get update >&2 && apt-get install -y --no-install-recommends "${missing[@]}" >&2; } ||
    die "apt-get install ${missing[*]} failed"
}

# The newest Debian 6.1 kernel image package (not -cloud, -rt or -dbg) that apt can fetch.
newest_kernel_package() {
  apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' 2>/dev/null |
    awk '{print $1}' | sort -V | tail -n 1
}

# fetch_kernel: sets KERNEL_DIR to the unpacked package in the cache, downloading it once.
fetch_kernel() {
  local pkg
  pkg="$(newest_kernel_package)"
  if [[ -z "${pkg}" ]]; then
    apt-get update >&2 || die "apt-get update failed"
    pkg="$(newest_kernel_package)"
  fi
  [[ -n "${pkg}" ]] || die "apt knows no linux-image-6.1.0-*-amd64 package"
  KERNEL_DIR="${VM_CACHE}/${pkg}"
  if [[ -f "${KERNEL_DIR}/.unpacked" ]]; then
    return
  fi
  mkdir -p "${VM_CACHE}"
  log "downloading ${pkg} into ${VM_CACHE}"
  local deb
  (cd "${VM_CACHE}" && apt-get download "${pkg}" >&2) || die "apt-get download ${pkg} failed"
  deb="$(find "${VM_CACHE}" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -n 1)"
  rm -rf "${KERNEL_DIR}"
  dpkg-deb -x "${deb}" "${KERNEL_DIR}" || die "cannot unpack ${deb}"
  touch "${KERNEL_DIR}/.unpacked"
}

# modinfo_depends FILE: the module names a .ko (possibly .ko.xz/.ko.zst) depends on.
modinfo_depends() {
  module_cat "$1" | tr '\0' '\n' | sed -n 's/^depends=//p' | tr ',' ' '
}

module_cat() {
  case "$1" in
    *.ko.xz) xz -dc "$1" ;;
    *.ko.zst) zstd -dcq "$1" ;;
    *) cat "$1" ;;
  esac
}

# resolve_module NAME: appends NAME's dependencies, then NAME, to MODULE_ORDER (once each).
resolve_module() {
  local name="${1//-/_}" file dep
  [[ " ${MODULE_ORDER[*]} " == *" ${name} "* ]] && return
  file="${MODULE_FILES[${name}]:-}"
  [[ -n "${file}" ]] || die "module ${name} is not in ${KERNEL_DIR}"
  for dep in $(modinfo_depends "${file}"); do
    resolve_module "${dep}"
  done
  MODULE_ORDER+=("${name}")
}

# build_initramfs: sets INITRAMFS to a cached initramfs for KERNEL_DIR and this script's init.
build_initramfs() {
  local init_src stamp
  init_src="$(dirname "${BASH_SOURCE[0]}")/guest_init.sh"
  [[ -f "${init_src}" ]] || die "missing ${init_src}"
  stamp="$(cat "${init_src}" "${BASH_SOURCE[0]}" /bin/busybox | sha256sum | cut -c1-16)"
  INITRAMFS="${KERNEL_DIR}/initramfs-${stamp}.cpio.gz"
  [[ -f "${INITRAMFS}" ]] && return

  local modules_root f base
  modules_root="$(echo "${KERNEL_DIR}"/lib/modules/*)"
  declare -gA MODULE_FILES=()
  while IFS= read -r f; do
    base="$(basename "${f}")"
    base="${base%%.ko*}"
    MODULE_FILES["${base//-/_}"]="${f}"
  done < <(find "${modules_root}/kernel" -name '*.ko*')
  MODULE_ORDER=()
  local m
  for m in "${GUEST_MODULES[@]}"; do
    resolve_module "${m}"
  done

  local root
  root="$(mktemp -d "${TMPDIR:-/tmp}/policyd-vm-initramfs-XXXXXX")"
  mkdir -p "${root}"/{bin,dev,proc,sys,newroot,lower,scratch,io,modules}
  cp /bin/busybox "${root}/bin/busybox"
  cp "${init_src}" "${root}/init"
  chmod 755 "${root}/init"
  for m in "${MODULE_ORDER[@]}"; do
    module_cat "${MODULE_FILES[${m}]}" >"${root}/modules/${m}.ko"
    echo "${m}" >>"${root}/modules/order"
  done
  (cd "${root}" && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1) >"${INITRAMFS}.tmp"
  mv "${INITRAMFS}.tmp" "${INITRAMFS}"
  rm -rf "${root}"
  log "built ${INITRAMFS} (modules: ${MODULE_ORDER[*]})"
}

# write_guest_command DIR COMMAND...: what the guest runs, with this shell's environment.
write_guest_command() {
  local dir="$1"
  shift
  {
    echo "# written by tests/vm/run.sh"
    export -p | grep -Ev '^declare -x (BASH_[A-Z_]*|OLDPWD|PWD|SHLVL|_|HOSTNAME|TMPDIR|TMP|TEMP|INVOCATION_ID|JOURNAL_STREAM|NOTIFY_SOCKET|LISTEN_[A-Z]*|SYSTEMD_[A-Z_]*)(=|$)' || true
    printf 'cd %q\n' "${PWD}"
    printf 'exec'
    printf ' %q' "$@"
    printf '\n'
  } >"${dir}/command.sh"
}

# write_keep_dir DIR: when the command runs under /tmp, which the guest replaces with a private
# tmpfs, names the top directory below /tmp that the guest must keep (guest_init.sh binds it).
write_keep_dir() {
  case "${PWD}" in
    /tmp/?*)
      local rest="${PWD#/tmp/}"
      echo "/tmp/${rest%%/*}" >"$1/keep_dir"
      ;;
  esac
}

# run_vm: boots the guest, streams COMMAND's output, sets VM_STATUS.
run_vm() {
  local io="$1" mode="$2" timeout="$3"
  local vmlinuz
  vmlinuz="$(echo "${KERNEL_DIR}"/boot/vmlinuz-*)"
  [[ -f "${vmlinuz}" ]] || die "no vmlinuz in ${KERNEL_DIR}/boot"

  # COMMAND's stdout and stderr leave the guest on ttyS1 and ttyS2, through fifos.
  mkfifo "${io}/stdout.in" "${io}/stdout.out" "${io}/stderr.in" "${io}/stderr.out"
  cat "${io}/stdout.out" &
  local out_pid=$!
  cat "${io}/stderr.out" >&2 &
  local err_pid=$!

  local args=(
    -nodefaults -no-user-config -nographic -display none
    -machine pc -accel tcg -cpu max -m "${VM_MEM}" -smp "${VM_CPUS}"
    -kernel "${vmlinuz}" -initrd "${INITRAMFS}"
    -append "console=ttyS0 quiet loglevel=4 panic=-1 oops=panic policyd_vm.mode=${mode}"
    -serial "file:${io}/console.log" -serial "pipe:${io}/stdout" -serial "pipe:${io}/stderr"
    -fsdev "local,id=lower,path=/,security_model=none,readonly=on,multidevs=remap"
    -device "virtio-9p-pci,fsdev=lower,mount_tag=lower"
    -fsdev "local,id=io,path=${io}/share,security_model=none"
    -device "virtio-9p-pci,fsdev=io,mount_tag=io"
    -nic none
  )
  if [[ "${mode}" == systemd ]]; then
    # The overlay's upper layer: survives a guest reboot, dies with this run.
    truncate -s 8G "${io}/scratch.img"
    mkfs.ext4 -q -F -O ^has_journal "${io}/scratch.img" >&2 || die "mkfs.ext4 failed"
    args+=(-drive "file=${io}/scratch.img,format=raw,if=virtio,cache=unsafe")
  else
    args+=(-no-reboot)
  fi
  local qemu_status=0
  if [[ -n "${timeout}" ]]; then
    timeout --foreground -k 10 "${timeout}" qemu-system-x86_64 "${args[@]}" </dev/null || qemu_status=$?
  else
    qemu-system-x86_64 "${args[@]}" </dev/null || qemu_status=$?
  fi
  wait "${out_pid}" "${err_pid}" || true

  if [[ "${POLICYD_VM_VERBOSE:-0}" == 1 ]]; then
    cat "${io}/console.log" >&2
  fi
  if [[ -f "${io}/share/status" ]]; then
    VM_STATUS="$(cat "${io}/share/status")"
    return
  fi
  [[ "${POLICYD_VM_VERBOSE:-0}" == 1 ]] || tail -n 60 "${io}/console.log" >&2
  if [[ ${qemu_status} -eq 124 ]]; then
    log "timed out after ${timeout}s"
    VM_STATUS=124
  else
    log "the guest stopped without running the command to its end (qemu status ${qemu_status})"
    VM_STATUS=125
  fi
}

main() {
  local kernel=6.1 mode=chroot timeout=""
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --kernel)
        [[ $# -ge 2 ]] || usage
        kernel="$2"
        shift 2
        ;;
      --systemd)
        mode=systemd
        shift
        ;;
      --timeout)
        [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || usage
        timeout="$2"
        shift 2
        ;;
      --)
        shift
        break
        ;;
      *) usage ;;
    esac
  done
  [[ $# -ge 1 ]] || usage

  case "${kernel}" in
    host)
      [[ "${mode}" == chroot ]] || die "--systemd needs a VM: use --kernel 6.1"
      exec "$@"
      ;;
    6.1) ;;
    *) die "unknown kernel ${kernel} (6.1 or host)" ;;
  esac
  [[ ${EUID} -eq 0 ]] || die "must run as root (the guest's / is this machine's, read as root)"

  ensure_host_packages
  fetch_kernel
  build_initramfs

  local io
  io="$(mktemp -d "${TMPDIR:-/tmp}/policyd-vm-XXXXXX")"
  # shellcheck disable=SC2064  # expand now: io is local
  trap "rm -rf '${io}'" EXIT
  mkdir -p "${io}/share"
  write_guest_command "${io}/share" "$@"
  write_keep_dir "${io}/share"
  cp "$(dirname "${BASH_SOURCE[0]}")/guest_command.sh" "${io}/share/"
  echo 0 >"${io}/share/boots"
  echo "${MAX_BOOTS}" >"${io}/share/max_boots"

  VM_STATUS=125
  run_vm "${io}" "${mode}" "${timeout}"
  exit "${VM_STATUS}"
}

main "$@"
