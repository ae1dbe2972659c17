# bpf_object(NAME SOURCE HEADERS...)
# Compiles SOURCE with clang for the BPF target (warnings are errors), runs
# `bpftool gen skeleton`, and defines an INTERFACE target NAME_skel whose
# include directory holds NAME.skel.h. The shared headers are listed as
# dependencies so a change to them rebuilds the object.
find_program(BPF_CLANG NAMES clang clang-14 REQUIRED)
find_program(BPFTOOL NAMES bpftool PATHS /usr/sbin /usr/local/sbin REQUIRED)

if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
  set(BPF_TARGET_ARCH x86)
else()
  message(FATAL_ERROR "capturewatch ships vmlinux.h for x86_64 only (bpf/x86)")
endif()

function(bpf_object NAME SOURCE)
  set(obj ${CMAKE_CURRENT_BINARY_DIR}/bpf/${NAME}.bpf.o)
  set(skel ${CMAKE_CURRENT_BINARY_DIR}/bpf/${NAME}.skel.h)
  set(deps ${ARGN})
  add_custom_command(
    OUTPUT ${obj}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_CURRENT_BINARY_DIR}/bpf
    COMMAND ${BPF_CLANG} -g -O2 -target bpf -D__TARGET_ARCH_${BPF_TARGET_ARCH}
            -Wall -Wextra -Werror -Wno-unused-parameter
            -I${CMAKE_SOURCE_DIR}/bpf/${BPF_TARGET_ARCH} -I${CMAKE_SOURCE_DIR}/bpf
            -c ${SOURCE} -o ${obj}.tmp
    # Drop DWARF (keep BTF): the object is embedded in the agent.
    COMMAND ${BPFTOOL} gen object ${obj} ${obj}.tmp
    DEPENDS ${SOURCE} ${deps}
    COMMENT "BPF ${NAME}"
    VERBATIM)
  add_custom_command(
    OUTPUT ${skel}
    COMMAND ${BPFTOOL} gen skeleton ${obj} name ${NAME}_bpf > ${skel}
    DEPENDS ${obj}
    COMMENT "BPF skeleton ${NAME}"
    VERBATIM)
  add_custom_target(${NAME}_skel_gen DEPENDS ${skel})
  add_library(${NAME}_skel INTERFACE)
  add_dependencies(${NAME}_skel ${NAME}_skel_gen)
  target_include_directories(${NAME}_skel INTERFACE ${CMAKE_CURRENT_BINARY_DIR}/bpf ${CMAKE_SOURCE_DIR}/bpf)
endfunction()
