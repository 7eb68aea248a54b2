# py_torch.cmake - the PyTorch front end's tests (pytest, the test venv's PyTorch 2.13), written
# from issue 9's contract. Included by tests/CMakeLists.txt.
# test_py_torch_mha.py    mha.MultiheadAttention against torch.nn.MultiheadAttention: random
#                         configurations, state_dict, dropout, autograd graphs, from_file;
# test_py_seed.py         mha.MultiHeadAttention against an independent PyTorch implementation;
# test_py_sdpa.py         mha.functional.scaled_dot_product_attention against PyTorch's;
# test_py_torch_errors.py bad inputs: the exceptions and their messages.
# Shared helpers: py_util.py (imported from the tests' directory).
foreach(name test_py_torch_mha test_py_seed test_py_sdpa test_py_torch_errors)
  mha_add_pytest(${name})
endforeach()
