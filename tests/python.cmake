# The Python package (python/mha) and Python threads: GIL released, one layer from many threads.
mha_add_pytest(test_py_threads_gil)
