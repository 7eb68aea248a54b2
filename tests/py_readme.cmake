# README's "Use it from Python": every Python block run as written (tests/test_py_readme.py).
mha_add_pytest(test_py_readme)
