# io_numpy: .npy and safetensors files cross-checked with numpy and tests/mha_py.py, through
# ctypes on the shared library. Skipped (exit 77) only when numpy is missing and
# $MHA_REQUIRE_TORCH is not set.
set(MHA_SYSTEM_PYTHON /usr/bin/python3)
if(EXISTS ${MHA_SYSTEM_PYTHON})
  add_test(NAME io_numpy
    COMMAND ${MHA_SYSTEM_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/io_numpy.py
            $<TARGET_FILE:mha_shared>)
  set_tests_properties(io_numpy PROPERTIES SKIP_RETURN_CODE 77)
elseif(DEFINED ENV{MHA_REQUIRE_TORCH})
  add_test(NAME io_numpy COMMAND ${CMAKE_COMMAND} -E false) # required but impossible: fail
else()
  message(STATUS "io_numpy: ${MHA_SYSTEM_PYTHON} not found, test not registered")
endif()
