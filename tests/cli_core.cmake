# tests/test_cli_core.py: the library's thread limit through `mha forward` and `mha info`.
add_test(NAME test_cli_core
  COMMAND ${MHA_PYTHON} -m pytest -q -p no:cacheprovider
          ${CMAKE_CURRENT_SOURCE_DIR}/test_cli_core.py
  WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
set_tests_properties(test_cli_core PROPERTIES
  ENVIRONMENT "MHA_BIN=$<TARGET_FILE:mha_cli>;PYTHONDONTWRITEBYTECODE=1" TIMEOUT 300)
