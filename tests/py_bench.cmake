# tests/py_bench.cmake - the Python benchmark's scripts (bench/py_bench.py, py_render.py,
# py_compare.sh) on tiny shapes: every comparison measured and checked, every ratio reported.
mha_add_pytest(test_py_bench)
