# io_numpy: .npy and safetensors files cross-checked with numpy and tests/mha_py.py, through
# ctypes on the shared library (test venv's Python).
add_test(NAME io_numpy
  COMMAND ${MHA_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/io_numpy.py $<TARGET_FILE:mha_shared>)
