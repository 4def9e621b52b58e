# PolicydBpf: builds a BPF C program with clang and turns the object into a libbpf skeleton
# header (the libbpf-bootstrap x.bpf.c -> x.bpf.o -> x.skel.h triad), exposed as an INTERFACE
# target that C++ code links to get the header and libbpf.
#
#   policyd_add_bpf_skeleton(<target> SOURCE <name>.bpf.c [INCLUDES <dir>...])
#
# Produces ${CMAKE_CURRENT_BINARY_DIR}/<name>.bpf.o and <name>.skel.h (skeleton `name <name>`,
# so the C API is <name>__open(), <name>__load(), ...). Programs use UAPI headers
# (<linux/bpf.h>, <bpf/bpf_helpers.h>), never vmlinux.h: policyd's programs touch no kernel
# structs, and UAPI headers keep the build independent of the build machine's kernel BTF.
# The caller's scope must have found libbpf as PkgConfig::LIBBPF (the top-level CMakeLists does).
include_guard(GLOBAL)

# clang-14 is what Debian 12 ships and CI installs; a plain `clang` is accepted as a fallback.
find_program(POLICYD_BPF_CLANG NAMES clang-14 clang DOC "clang used to compile BPF programs")
find_program(POLICYD_BPFTOOL NAMES bpftool PATHS /usr/sbin /sbin /usr/local/sbin
             DOC "bpftool used to generate libbpf skeletons")

# linux/types.h includes <asm/types.h>, which Debian keeps under the multiarch directory; with
# -target bpf clang does not search it by itself.
function(_policyd_bpf_multiarch out_var)
  if(CMAKE_LIBRARY_ARCHITECTURE)
    set(${out_var} "${CMAKE_LIBRARY_ARCHITECTURE}" PARENT_SCOPE)
    return()
  endif()
  execute_process(COMMAND ${CMAKE_C_COMPILER} -print-multiarch
                  OUTPUT_VARIABLE triplet OUTPUT_STRIP_TRAILING_WHITESPACE
                  RESULT_VARIABLE rc ERROR_QUIET)
  if(NOT rc EQUAL 0 OR triplet STREQUAL "")
    message(FATAL_ERROR "PolicydBpf: cannot determine the multiarch triplet for /usr/include/<triplet>")
  endif()
  set(${out_var} "${triplet}" PARENT_SCOPE)
endfunction()

# bpf_tracing.h and friends key register layouts off __TARGET_ARCH_<arch>.
function(_policyd_bpf_target_arch out_var)
  string(TOLOWER "${CMAKE_SYSTEM_PROCESSOR}" proc)
  if(proc MATCHES "^(x86_64|amd64|i.86)$")
    set(arch x86)
  elseif(proc MATCHES "^(aarch64|arm64)$")
    set(arch arm64)
  elseif(proc MATCHES "^arm")
    set(arch arm)
  elseif(proc MATCHES "^ppc64|^powerpc64")
    set(arch powerpc)
  elseif(proc MATCHES "^s390")
    set(arch s390)
  elseif(proc MATCHES "^riscv")
    set(arch riscv)
  else()
    message(FATAL_ERROR "PolicydBpf: no __TARGET_ARCH_ mapping for processor '${CMAKE_SYSTEM_PROCESSOR}'")
  endif()
  set(${out_var} ${arch} PARENT_SCOPE)
endfunction()

function(policyd_add_bpf_skeleton target)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "SOURCE" "INCLUDES")
  if(arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "policyd_add_bpf_skeleton(${target}): unexpected arguments: ${arg_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT arg_SOURCE)
    message(FATAL_ERROR "policyd_add_bpf_skeleton(${target}): SOURCE <file.bpf.c> is required")
  endif()
  if(NOT POLICYD_BPF_CLANG)
    message(FATAL_ERROR "policyd_add_bpf_skeleton(${target}): clang not found; "
                        "install it with `apt-get install clang-14 llvm-14` "
                        "or pass -DPOLICYD_BPF_CLANG=/path/to/clang")
  endif()
  if(NOT POLICYD_BPFTOOL)
    message(FATAL_ERROR "policyd_add_bpf_skeleton(${target}): bpftool not found; "
                        "install it with `apt-get install bpftool` "
                        "or pass -DPOLICYD_BPFTOOL=/path/to/bpftool")
  endif()

  get_filename_component(src "${arg_SOURCE}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
  get_filename_component(file_name "${src}" NAME)
  if(NOT file_name MATCHES "^([A-Za-z_][A-Za-z0-9_]*)\\.bpf\\.c$")
    message(FATAL_ERROR "policyd_add_bpf_skeleton(${target}): SOURCE must be named <name>.bpf.c "
                        "with <name> a C identifier (it names the skeleton); got '${file_name}'")
  endif()
  set(name "${CMAKE_MATCH_1}")

  _policyd_bpf_multiarch(triplet)
  _policyd_bpf_target_arch(arch)

  set(out_dir "${CMAKE_CURRENT_BINARY_DIR}")
  set(obj "${out_dir}/${name}.bpf.o")
  set(skel "${out_dir}/${name}.skel.h")

  set(include_flags "-I/usr/include/${triplet}")
  foreach(dir IN LISTS arg_INCLUDES)
    get_filename_component(abs_dir "${dir}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    list(APPEND include_flags "-I${abs_dir}")
  endforeach()

  # -g is not optional: libbpf needs the BTF it produces for BTF-defined maps and globals.
  add_custom_command(
    OUTPUT "${obj}"
    COMMAND "${POLICYD_BPF_CLANG}" -target bpf -g -O2 -Wall -D__TARGET_ARCH_${arch}
            ${include_flags} -MD -MF "${obj}.d" -c "${src}" -o "${obj}"
    DEPENDS "${src}"
    DEPFILE "${obj}.d"
    COMMENT "Compiling BPF program ${file_name}"
    VERBATIM)

  # Written through a temporary file so that a failed bpftool run never leaves a truncated
  # header that a later build would take as up to date.
  add_custom_command(
    OUTPUT "${skel}"
    COMMAND sh -c "\"$0\" gen skeleton \"$1\" name \"$2\" > \"$3.tmp\" && mv \"$3.tmp\" \"$3\""
            "${POLICYD_BPFTOOL}" "${obj}" "${name}" "${skel}"
    DEPENDS "${obj}"
    COMMENT "Generating BPF skeleton ${name}.skel.h"
    VERBATIM)

  add_custom_target(${target}_generate DEPENDS "${skel}")
  add_library(${target} INTERFACE)
  # SYSTEM: the skeleton is generated code; our warning flags are not meant for it.
  target_include_directories(${target} SYSTEM INTERFACE "${out_dir}")
  target_link_libraries(${target} INTERFACE PkgConfig::LIBBPF)
  add_dependencies(${target} ${target}_generate)
  set_target_properties(${target} PROPERTIES
    POLICYD_BPF_OBJECT "${obj}"
    POLICYD_BPF_SKELETON "${skel}")
endfunction()
