# Point pybind11's header target at a copy of its headers inside the build tree.
#
# pip builds in a fresh isolated environment each time (/tmp/pip-build-env-XXXX), so the include
# directory pybind11's CMake config reports changes from one `pip install` to the next. The copy
# has a fixed path, and configure_file(COPYONLY) leaves a file untouched when its content is the
# same, so an unchanged pybind11 neither changes the compile command nor looks newer to Ninja.
# A different pybind11 version rewrites the changed headers and recompiles the module, as it must.
if(NOT TARGET pybind11::pybind11_headers OR NOT pybind11_INCLUDE_DIR)
  return()
endif()
set(_mpx_pyb_src "${pybind11_INCLUDE_DIR}")
set(_mpx_pyb_dst "${CMAKE_BINARY_DIR}/_deps/pybind11-include")
# Only the pybind11/ subdirectory: a system pybind11 has its headers in /usr/include.
file(GLOB_RECURSE _mpx_pyb_headers RELATIVE "${_mpx_pyb_src}" "${_mpx_pyb_src}/pybind11/*")
if(NOT _mpx_pyb_headers)
  return()
endif()
set(_mpx_pyb_keep "")
foreach(h IN LISTS _mpx_pyb_headers)
  configure_file("${_mpx_pyb_src}/${h}" "${_mpx_pyb_dst}/${h}" COPYONLY)
  list(APPEND _mpx_pyb_keep "${_mpx_pyb_dst}/${h}")
endforeach()
# Headers a previous pybind11 had and this one has not must not shadow anything.
file(GLOB_RECURSE _mpx_pyb_old "${_mpx_pyb_dst}/*")
foreach(h IN LISTS _mpx_pyb_old)
  if(NOT h IN_LIST _mpx_pyb_keep)
    file(REMOVE "${h}")
  endif()
endforeach()
set_property(TARGET pybind11::pybind11_headers PROPERTY INTERFACE_INCLUDE_DIRECTORIES "${_mpx_pyb_dst}")
set(pybind11_INCLUDE_DIR "${_mpx_pyb_dst}")
set(pybind11_INCLUDE_DIRS "${_mpx_pyb_dst}")
