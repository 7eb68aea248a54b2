# The Python package installed and found (tests/python_install.py), with the test venv's Python:
# python_wheel     `pip install .` without the network: the wheel of this source tree built by
#                  the test venv (scikit-build-core, tests/requirements.txt), installed into a
#                  fresh venv, imported there with its own libmha.so;
# python_checkout  `PYTHONPATH=python python -c "import mha"` after `make` loads build/libmha.so,
#                  MHA_LIBRARY overrides it. Only where the build tree is the checkout's build/,
#                  the layout `make` uses and the package looks for.
add_test(NAME python_wheel COMMAND ${MHA_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/python_install.py
  wheel ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR})
set_tests_properties(python_wheel PROPERTIES TIMEOUT 300)
if(CMAKE_BINARY_DIR STREQUAL "${CMAKE_SOURCE_DIR}/build")
  add_test(NAME python_checkout
    COMMAND ${MHA_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/python_install.py
      checkout ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR})
endif()
