# The committed fixtures are what tests/golden/gen_golden.py writes with PyTorch 2.13 (test venv).
add_test(NAME golden_fresh COMMAND ${MHA_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/golden_fresh.py)
