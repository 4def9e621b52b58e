# Runs at install time (cmake --install, cpack): the files whose contents or place depend on the
# install prefix. The unit in deploy/systemd/ is written for the prefix /usr (the package's);
# for another prefix its /usr/sbin and /etc paths are rewritten. Configuration goes to /etc
# for the prefix /usr (FHS), else to <prefix>/etc, like GNUInstallDirs does.
# Set by deploy/CMakeLists.txt: POLICYD_SOURCE_DIR, POLICYD_STAGE_DIR, POLICYD_SBINDIR,
# POLICYD_DOCDIR.
if(CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  set(etc_dir /etc)
else()
  set(etc_dir "${CMAKE_INSTALL_PREFIX}/etc")
endif()
# A stage per destination: installs into other DESTDIRs or prefixes may run at the same time.
string(MD5 stage_id "$ENV{DESTDIR}|${CMAKE_INSTALL_PREFIX}")
set(stage "${POLICYD_STAGE_DIR}/${stage_id}")
file(MAKE_DIRECTORY "${stage}")

file(READ "${POLICYD_SOURCE_DIR}/deploy/systemd/policyd.service" unit)
string(REPLACE "/usr/sbin/policyd" "${CMAKE_INSTALL_PREFIX}/${POLICYD_SBINDIR}/policyd" unit
               "${unit}")
string(REPLACE "/etc/policyd/" "${etc_dir}/policyd/" unit "${unit}")
string(REPLACE "/usr/share/doc/policyd/" "${CMAKE_INSTALL_PREFIX}/${POLICYD_DOCDIR}/" unit
               "${unit}")
file(WRITE "${stage}/policyd.service" "${unit}")
file(INSTALL "${stage}/policyd.service"
     DESTINATION "${CMAKE_INSTALL_PREFIX}/lib/systemd/system"
     PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)

# The example configuration, with the API socket handed to the policyd group (sysusers.d).
file(READ "${POLICYD_SOURCE_DIR}/config/policyd.yaml" config)
string(REGEX REPLACE "\n  # socket_group: policyd[^\n]*" "\n  socket_group: policyd      # members may connect; allow-lists below still apply"
       installed "${config}")
if(installed STREQUAL config)
  message(FATAL_ERROR "install: config/policyd.yaml no longer has the \"# socket_group: policyd\" "
                      "line that the installed configuration enables")
endif()
file(WRITE "${stage}/policyd.yaml" "${installed}")
if(EXISTS "$ENV{DESTDIR}${etc_dir}/policyd/policyd.yaml")
  # Never overwrite an administrator's configuration.
  message(STATUS "Keeping: $ENV{DESTDIR}${etc_dir}/policyd/policyd.yaml")
else()
  file(INSTALL "${stage}/policyd.yaml" DESTINATION "${etc_dir}/policyd"
       PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
endif()
file(REMOVE_RECURSE "${stage}")
