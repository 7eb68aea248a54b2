# The Python package (python/mha): Python threads (GIL released, one layer from many threads);
# masks that are exactly causal run as the causal flag.
mha_add_pytest(test_py_threads_gil)
mha_add_pytest(test_py_causal_mask)
