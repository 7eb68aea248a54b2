# py_flash.cmake - FlashAttention 2's interface and grouped-query attention in the Python package
# (pytest, the test venv's PyTorch 2.13). Included by tests/CMakeLists.txt.
# test_py_flash.py      mha.flash_attn_func, mha.flash_attn_varlen_func against FlashAttention's
#                       attention_ref in float64 (flash_ref.py), forward and gradients;
# test_py_kvcache.py    mha.flash_attn_with_kvcache: the in-place cache update, outputs;
#                       flash_attn_varlen_func with block_table (paged caches);
# test_py_numpy_gqa.py  mha.attention / attention_backward with fewer key/value heads (NumPy).
foreach(name test_py_flash test_py_kvcache test_py_numpy_gqa)
  mha_add_pytest(${name})
endforeach()
