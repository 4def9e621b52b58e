#!/usr/bin/env bash
# Install and packaging checks (ctest label `install`; no root needed, nothing touches the host):
#   layout  `cmake --install` into a DESTDIR: FHS places for the prefixes /usr and /usr/local, the
#           unit's ExecStart= and --config paths, the installed config and the DaemonSet's
#           ConfigMap pass `policyd --check-config`, sysusers.d/tmpfiles.d entries applied to the
#           DESTDIR root create the policyd group and a 0700 state directory.
#   verify  `systemd-analyze verify` on the installed unit (ExecStart= pointed at the installed
#           binary, which must exist): any output on stderr fails, since it exits 0 on bad values.
#   deb     `cpack -G DEB`: control fields, contents and owners, conffiles, maintainer scripts
#           (syntax, permissions, and postinst run against stub commands: systemd-sysusers when
#           present, else addgroup --system).
# usage: install_test.sh layout|verify|deb BUILD_DIR SOURCE_DIR
set -euo pipefail

mode="$1"
build="$2"
src="$3"
work="$(mktemp -d "${TMPDIR:-/tmp}/policyd-install-XXXXXX")"
trap 'rm -rf "${work}"' EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}
need() {
  command -v "$1" >/dev/null 2>&1 || fail "$1 is missing (deploy/setup.sh installs package $2)"
}
# expect_file PATH [MODE]
expect_file() {
  [[ -f "$1" ]] || fail "missing $1"
  if [[ $# -ge 2 ]]; then
    local mode_now
    mode_now="$(stat -c %a "$1")"
    [[ "${mode_now}" == "$2" ]] || fail "$1 has mode ${mode_now}, want $2"
  fi
}
expect_line() {  # expect_line FILE REGEX
  grep -Eq -- "$2" "$1" || fail "$1 has no line matching: $2"
}

install_into() {  # install_into DESTDIR PREFIX
  DESTDIR="$1" cmake --install "${build}" --prefix "$2" >"${work}/install.log" 2>&1 ||
    { cat "${work}/install.log" >&2; fail "cmake --install --prefix $2"; }
}

check_layout() {
  need systemd-sysusers systemd
  need systemd-tmpfiles systemd

  # The distribution prefix: what the .deb holds.
  local root="${work}/usr-root"
  install_into "${root}" /usr
  expect_file "${root}/usr/sbin/policyd" 755
  expect_file "${root}/usr/bin/policyctl" 755
  expect_file "${root}/usr/sbin/policyd-xdp-acl" 755
  expect_file "${root}/usr/include/policyd/policyd.h" 644
  expect_file "${root}/usr/include/policyd/abi.h" 644
  expect_file "${root}/usr/share/doc/policyd/bpf/xdp_acl.bpf.c"
  expect_file "${root}/usr/lib/systemd/system/policyd.service" 644
  expect_file "${root}/usr/lib/sysusers.d/policyd.conf" 644
  expect_file "${root}/usr/lib/tmpfiles.d/policyd.conf" 644
  expect_file "${root}/etc/policyd/policyd.yaml" 644
  expect_file "${root}/usr/share/doc/policyd/README.md"
  expect_file "${root}/usr/share/doc/policyd/examples/acl-v1.yaml"
  expect_file "${root}/usr/share/doc/policyd/kubernetes/policyd-daemonset.yaml"
  # Nothing outside the FHS places above (no /usr/local, no lib64, no stray top-level dirs).
  local stray
  stray="$(cd "${root}" && find . -type f | grep -Ev '^\./(usr/(sbin|bin|include/policyd|lib/(systemd/system|sysusers\.d|tmpfiles\.d)|share/doc/policyd)|etc/policyd)/' || true)"
  [[ -z "${stray}" ]] || fail "files outside the expected FHS places: ${stray}"

  local unit="${root}/usr/lib/systemd/system/policyd.service"
  expect_line "${unit}" '^ExecStart=/usr/sbin/policyd --config /etc/policyd/policyd.yaml$'
  expect_line "${unit}" '^Type=notify$'
  expect_line "${unit}" '^ExecReload=/bin/kill -HUP \$MAINPID$'
  expect_line "${unit}" '^WatchdogSec='
  expect_line "${unit}" '^CapabilityBoundingSet=CAP_BPF CAP_SYS_ADMIN$'
  expect_line "${unit}" '^SupplementaryGroups=policyd$'
  expect_line "${unit}" '^StateDirectory=policyd$'
  expect_line "${unit}" '^RuntimeDirectory=policyd$'
  expect_line "${unit}" '^BindPaths=-/sys/fs/bpf/policyd$'
  expect_line "${unit}" '^ExecStartPre=\+/bin/mkdir -p /sys/fs/bpf/policyd$'
  expect_line "${unit}" '^LimitMEMLOCK=infinity$'

  # The installed configuration hands the socket to the policyd group and is valid as installed;
  # its paths agree with the unit's directories.
  local config="${root}/etc/policyd/policyd.yaml"
  expect_line "${config}" '^  socket_group: policyd'
  expect_line "${config}" '^  socket: /run/policyd/policyd\.sock'
  expect_line "${config}" '^state_dir: /var/lib/policyd'
  expect_line "${config}" '^pin_dir: /sys/fs/bpf/'
  "${root}/usr/sbin/policyd" --check-config "${config}" || fail "installed config is invalid"
  "${root}/usr/sbin/policyd" --version | grep -q '^policyd ' || fail "policyd --version"
  "${root}/usr/bin/policyctl" --help >/dev/null 2>&1 || fail "policyctl --help"

  # The DaemonSet's ConfigMap holds a valid configuration too.
  awk '/^  policyd\.yaml: \|/ {on = 1; next} on && /^---/ {exit} on {sub(/^    /, ""); print}' \
    "${root}/usr/share/doc/policyd/kubernetes/policyd-daemonset.yaml" >"${work}/k8s.yaml"
  [[ -s "${work}/k8s.yaml" ]] || fail "no policyd.yaml in the DaemonSet's ConfigMap"
  "${root}/usr/sbin/policyd" --check-config "${work}/k8s.yaml" || fail "the ConfigMap's config"

  # sysusers.d and tmpfiles.d entries, applied to the DESTDIR root only.
  systemd-sysusers --root="${root}" >"${work}/sysusers.log" 2>&1 ||
    { cat "${work}/sysusers.log" >&2; fail "systemd-sysusers --root"; }
  grep -q '^policyd:x:' "${root}/etc/group" || fail "sysusers.d did not create group policyd"
  systemd-tmpfiles --root="${root}" --create >"${work}/tmpfiles.log" 2>&1 ||
    { cat "${work}/tmpfiles.log" >&2; fail "systemd-tmpfiles --root --create"; }
  [[ -d "${root}/var/lib/policyd" ]] || fail "tmpfiles.d did not create /var/lib/policyd"
  [[ "$(stat -c %a "${root}/var/lib/policyd")" == 700 ]] || fail "/var/lib/policyd is not 0700"

  # Another prefix: everything below it, configuration in <prefix>/etc, and the unit says so.
  local local_root="${work}/local-root"
  install_into "${local_root}" /usr/local
  expect_file "${local_root}/usr/local/sbin/policyd" 755
  expect_file "${local_root}/usr/local/bin/policyctl" 755
  expect_file "${local_root}/usr/local/etc/policyd/policyd.yaml"
  expect_file "${local_root}/usr/local/lib/sysusers.d/policyd.conf"
  expect_file "${local_root}/usr/local/lib/tmpfiles.d/policyd.conf"
  local local_unit="${local_root}/usr/local/lib/systemd/system/policyd.service"
  expect_file "${local_unit}"
  expect_line "${local_unit}" '^ExecStart=/usr/local/sbin/policyd --config /usr/local/etc/policyd/policyd\.yaml$'
  if grep -Eq '(^|[ =])/(usr/sbin|etc)/policyd' "${local_unit}"; then
    fail "${local_unit} still names /usr/sbin or /etc paths"
  fi
  stray="$(cd "${local_root}" && find . -type f | grep -v '^\./usr/local/' || true)"
  [[ -z "${stray}" ]] || fail "prefix /usr/local installed outside it: ${stray}"

  # A second install keeps an edited configuration.
  echo "# edited" >>"${config}"
  install_into "${root}" /usr
  expect_line "${config}" '^# edited$'
  echo "layout: ok"
}

check_verify() {
  need systemd-analyze systemd
  local root="${work}/usr-root"
  install_into "${root}" /usr
  # systemd-analyze verify wants ExecStart='s binary to exist: point it at the installed one.
  mkdir -p "${work}/verify"
  sed "s#/usr/sbin/policyd#${root}/usr/sbin/policyd#g" \
    "${root}/usr/lib/systemd/system/policyd.service" >"${work}/verify/policyd.service"
  grep -q "^ExecStart=${root}/usr/sbin/policyd " "${work}/verify/policyd.service" ||
    fail "ExecStart= was not rewritten"
  local rc=0
  SYSTEMD_LOG_LEVEL=notice systemd-analyze verify "${work}/verify/policyd.service" \
    >"${work}/verify.out" 2>"${work}/verify.err" || rc=$?
  cat "${work}/verify.out"
  if [[ ${rc} -ne 0 || -s "${work}/verify.err" ]]; then
    cat "${work}/verify.err" >&2
    fail "systemd-analyze verify: exit ${rc}, stderr above"
  fi
  echo "verify: ok (systemd-analyze verify printed nothing on stderr)"
}

check_deb() {
  need cpack cmake
  need dpkg-deb dpkg
  need dpkg-shlibdeps dpkg-dev
  need file file
  (cd "${work}" && cpack -G DEB --config "${build}/CPackConfig.cmake" -B "${work}/pkg") \
    >"${work}/cpack.log" 2>&1 || { cat "${work}/cpack.log" >&2; fail "cpack -G DEB"; }
  local debs=("${work}"/pkg/*.deb)
  [[ ${#debs[@]} -eq 1 && -f "${debs[0]}" ]] || fail "expected one .deb, got: ${debs[*]}"
  local deb="${debs[0]}"
  echo "built $(basename "${deb}")"

  # Control fields.
  dpkg-deb --field "${deb}" Package | grep -qx policyd || fail "Package is not policyd"
  dpkg-deb --field "${deb}" Architecture | grep -qx "$(dpkg --print-architecture)" ||
    fail "Architecture"
  local depends
  depends="$(dpkg-deb --field "${deb}" Depends)"
  echo "Depends: ${depends}"
  [[ "${depends}" == *libgrpc++* ]] || fail "Depends lacks libgrpc++ (dpkg-shlibdeps)"
  [[ "${depends}" == *libsystemd0* ]] || fail "Depends lacks libsystemd0 (dpkg-shlibdeps)"
  [[ "${depends}" == *"systemd | adduser"* ]] || fail "Depends lacks 'systemd | adduser'"

  # Contents: FHS paths, owned by root.
  dpkg-deb --contents "${deb}" >"${work}/contents"
  local path
  for path in ./usr/sbin/policyd ./usr/bin/policyctl ./usr/sbin/policyd-xdp-acl \
    ./usr/include/policyd/policyd.h ./usr/lib/systemd/system/policyd.service \
    ./usr/lib/sysusers.d/policyd.conf ./usr/lib/tmpfiles.d/policyd.conf \
    ./etc/policyd/policyd.yaml ./usr/share/doc/policyd/README.md; do
    grep -q " ${path}\$" "${work}/contents" || fail "${path} is not in the package"
  done
  if awk '{print $2}' "${work}/contents" | grep -v '^root/root$' | grep -q .; then
    fail "files not owned by root/root in the package"
  fi
  mkdir -p "${work}/data"
  dpkg-deb --extract "${deb}" "${work}/data"
  expect_line "${work}/data/usr/lib/systemd/system/policyd.service" \
    '^ExecStart=/usr/sbin/policyd --config /etc/policyd/policyd.yaml$'

  # Control archive: conffiles and maintainer scripts.
  mkdir -p "${work}/control"
  dpkg-deb --control "${deb}" "${work}/control"
  grep -qx /etc/policyd/policyd.yaml "${work}/control/conffiles" || fail "conffiles"
  local script
  for script in postinst prerm postrm; do
    expect_file "${work}/control/${script}" 755
    sh -n "${work}/control/${script}" || fail "${script}: syntax error"
  done
  expect_line "${work}/control/postinst" 'systemd-sysusers policyd\.conf'
  expect_line "${work}/control/postinst" 'addgroup --system policyd'

  # postinst against stub commands (PATH holds nothing else): with systemd-sysusers, then without.
  local stubs="${work}/stubs" calls="${work}/calls"
  mkdir -p "${stubs}"
  local cmd
  for cmd in systemd-sysusers systemd-tmpfiles addgroup systemctl; do
    printf '#!/bin/sh\necho "%s $*" >>"%s"\n' "${cmd}" "${calls}" >"${stubs}/${cmd}"
  done
  printf '#!/bin/sh\nexit 2\n' >"${stubs}/getent"  # no such group yet
  chmod 755 "${stubs}"/*
  PATH="${stubs}" /bin/sh "${work}/control/postinst" configure >/dev/null ||
    fail "postinst configure failed"
  grep -qx 'systemd-sysusers policyd.conf' "${calls}" || fail "postinst did not run systemd-sysusers"
  grep -qx 'systemd-tmpfiles --create policyd.conf' "${calls}" ||
    fail "postinst did not run systemd-tmpfiles"
  if grep -q '^addgroup' "${calls}"; then fail "postinst ran addgroup although sysusers exists"; fi
  rm -f "${stubs}/systemd-sysusers" "${stubs}/systemd-tmpfiles" "${calls}"
  PATH="${stubs}" /bin/sh "${work}/control/postinst" configure >/dev/null ||
    fail "postinst configure (no systemd) failed"
  grep -qx 'addgroup --system policyd' "${calls}" || fail "postinst did not fall back to addgroup"
  PATH="${stubs}" /bin/sh "${work}/control/prerm" remove || fail "prerm remove failed"
  PATH="${stubs}" /bin/sh "${work}/control/postrm" remove || fail "postrm remove failed"
  echo "deb: ok"
}

case "${mode}" in
  layout) check_layout ;;
  verify) check_verify ;;
  deb) check_deb ;;
  *) fail "unknown mode ${mode}" ;;
esac
