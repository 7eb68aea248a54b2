# The committed fixtures are what tests/golden/gen_golden.py writes (needs PyTorch).
add_test(NAME golden_fresh COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/golden_fresh.py)
set_tests_properties(golden_fresh PROPERTIES SKIP_RETURN_CODE 77)
