# Build options. Each reads an environment variable of the same name as its default, so
# `MOLPHENIX_WITH_CUDA=OFF pip install .` works without -C flags.
#
# MOLPHENIX_WITH_CUDA
#   OFF   never build the CUDA kernels.
#   ON    build them; configuring fails when no CUDA compiler is found.
#   AUTO  (default) build them when a CUDA compiler is found AND either a GPU is visible on the
#         build machine (`nvidia-smi -L` lists one, or /proc/driver/nvidia/gpus is not empty) or
#         MOLPHENIX_CUDA_ARCHS is given explicitly. nvcc alone (a CUDA toolkit on a machine without
#         a GPU) does not turn them on: compiling kernels nobody on this machine can run costs
#         minutes for nothing. Give the architectures (or ON) to build a GPU wheel elsewhere.
# MOLPHENIX_CUDA_ARCHS
#   CMake architecture list; empty (default) means MPX_DEFAULT_CUDA_ARCHS.
# The decision and its reason are printed at configure time (`pip -v`) and compiled into
# build_info() as "cuda" / "cuda_reason".
include(CheckLanguage)

set(MPX_DEFAULT_CUDA_ARCHS "80-real;90-real;90-virtual")

set(_mpx_cuda_default AUTO)
if(DEFINED ENV{MOLPHENIX_WITH_CUDA} AND NOT "$ENV{MOLPHENIX_WITH_CUDA}" STREQUAL "")
  set(_mpx_cuda_default $ENV{MOLPHENIX_WITH_CUDA})
endif()
set(MOLPHENIX_WITH_CUDA ${_mpx_cuda_default} CACHE STRING "Build the CUDA kernels: AUTO, ON or OFF")
set_property(CACHE MOLPHENIX_WITH_CUDA PROPERTY STRINGS AUTO ON OFF)

set(_mpx_archs_default "")
if(DEFINED ENV{MOLPHENIX_CUDA_ARCHS})
  set(_mpx_archs_default "$ENV{MOLPHENIX_CUDA_ARCHS}")
endif()
set(MOLPHENIX_CUDA_ARCHS "${_mpx_archs_default}" CACHE STRING
    "CUDA architectures (CMake syntax); empty: ${MPX_DEFAULT_CUDA_ARCHS}")
set(_mpx_archs_given OFF)
if(NOT "${MOLPHENIX_CUDA_ARCHS}" STREQUAL "")
  set(_mpx_archs_given ON)
endif()
set(_mpx_archs "${MOLPHENIX_CUDA_ARCHS}")
if(NOT _mpx_archs_given)
  set(_mpx_archs "${MPX_DEFAULT_CUDA_ARCHS}")
endif()

# Is a GPU visible to this build? (Only AUTO asks.)
function(mpx_detect_gpu out_found out_what)
  set(found OFF)
  set(what "no GPU visible (nvidia-smi lists none, /proc/driver/nvidia/gpus is empty)")
  find_program(MPX_NVIDIA_SMI nvidia-smi)
  if(MPX_NVIDIA_SMI)
    execute_process(COMMAND ${MPX_NVIDIA_SMI} -L RESULT_VARIABLE rc OUTPUT_VARIABLE out
                    ERROR_QUIET TIMEOUT 20)
    if(rc EQUAL 0 AND out MATCHES "GPU [0-9]+: ([^\n(]*)")
      set(found ON)
      string(STRIP "${CMAKE_MATCH_1}" name)
      set(what "a GPU is visible (nvidia-smi -L: ${name})")
    endif()
  endif()
  if(NOT found)
    file(GLOB gpus /proc/driver/nvidia/gpus/*)
    if(gpus)
      set(found ON)
      set(what "a GPU is visible (/proc/driver/nvidia/gpus)")
    endif()
  endif()
  set(${out_found} ${found} PARENT_SCOPE)
  set(${out_what} "${what}" PARENT_SCOPE)
endfunction()

set(MOLPHENIX_CUDA_ENABLED OFF)
set(MOLPHENIX_CUDA_REASON "")
string(TOUPPER "${MOLPHENIX_WITH_CUDA}" _mpx_cuda_opt)
set(_mpx_try_cuda OFF)
if(_mpx_cuda_opt STREQUAL "OFF")
  set(MOLPHENIX_CUDA_REASON "MOLPHENIX_WITH_CUDA=OFF")
elseif(_mpx_cuda_opt STREQUAL "ON")
  set(_mpx_try_cuda ON)
  set(MOLPHENIX_CUDA_REASON "MOLPHENIX_WITH_CUDA=ON")
elseif(_mpx_cuda_opt STREQUAL "AUTO")
  if(_mpx_archs_given)
    set(_mpx_try_cuda ON)
    set(MOLPHENIX_CUDA_REASON "MOLPHENIX_WITH_CUDA=AUTO: MOLPHENIX_CUDA_ARCHS was given")
  else()
    mpx_detect_gpu(_mpx_gpu _mpx_gpu_what)
    if(_mpx_gpu)
      set(_mpx_try_cuda ON)
      set(MOLPHENIX_CUDA_REASON "MOLPHENIX_WITH_CUDA=AUTO: ${_mpx_gpu_what}")
    else()
      set(MOLPHENIX_CUDA_REASON "MOLPHENIX_WITH_CUDA=AUTO: ${_mpx_gpu_what} and MOLPHENIX_CUDA_ARCHS is not set (set MOLPHENIX_WITH_CUDA=ON or MOLPHENIX_CUDA_ARCHS to build them anyway)")
    endif()
  endif()
else()
  message(FATAL_ERROR "MOLPHENIX_WITH_CUDA must be AUTO, ON or OFF, got '${MOLPHENIX_WITH_CUDA}'")
endif()

if(_mpx_try_cuda)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(CMAKE_CUDA_ARCHITECTURES ${_mpx_archs})
    enable_language(CUDA)
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)
    set(MOLPHENIX_CUDA_ENABLED ON)
    set(MOLPHENIX_CUDA_REASON "${MOLPHENIX_CUDA_REASON}, nvcc ${CMAKE_CUDA_COMPILER_VERSION}")
  elseif(_mpx_cuda_opt STREQUAL "ON")
    message(FATAL_ERROR "MOLPHENIX_WITH_CUDA=ON but no CUDA compiler was found (set CUDACXX or PATH)")
  else()
    set(MOLPHENIX_CUDA_REASON "${MOLPHENIX_CUDA_REASON}, but no CUDA compiler (nvcc) was found (set CUDACXX or PATH)")
  endif()
endif()

set(MOLPHENIX_CUDA_ARCHS_STR "")
if(MOLPHENIX_CUDA_ENABLED)
  string(REPLACE ";" "," MOLPHENIX_CUDA_ARCHS_STR "${_mpx_archs}")
  message(STATUS "molphenix: CUDA kernels ON, architectures: ${MOLPHENIX_CUDA_ARCHS_STR} (${MOLPHENIX_CUDA_REASON})")
else()
  message(STATUS "molphenix: CUDA kernels OFF (${MOLPHENIX_CUDA_REASON})")
endif()
# The reason goes into a C string literal: no list separators, no quotes or backslashes.
string(REPLACE ";" "," MOLPHENIX_CUDA_REASON "${MOLPHENIX_CUDA_REASON}")
string(REPLACE "\"" "'" MOLPHENIX_CUDA_REASON "${MOLPHENIX_CUDA_REASON}")
string(REPLACE "\\" "/" MOLPHENIX_CUDA_REASON "${MOLPHENIX_CUDA_REASON}")

set(MPX_WARNINGS -Wall -Wextra -Wno-unused-parameter)

# Sanitizers for the CPU kernels and the module (scripts/sanitize.sh): a comma list such as
# "address,undefined". Off by default; never for wheels.
set(MOLPHENIX_SANITIZE "$ENV{MOLPHENIX_SANITIZE}" CACHE STRING
    "Build with -fsanitize=<list> (e.g. address,undefined); empty: off")
set(MPX_SANITIZE_FLAGS "")
if(NOT "${MOLPHENIX_SANITIZE}" STREQUAL "")
  set(MPX_SANITIZE_FLAGS -fsanitize=${MOLPHENIX_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all -g)
  message(STATUS "molphenix: sanitizers ON: ${MOLPHENIX_SANITIZE}")
endif()
