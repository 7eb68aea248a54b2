# py_dtype.cmake - bfloat16 and float16 in the Python package (pytest, the test venv's PyTorch
# 2.13). Included by tests/CMakeLists.txt.
# test_py_dtype.py  scaled_dot_product_attention, flash_attn_func, attention /
#                   attention_backward in bfloat16 / float16: accuracy against a float64
#                   reference compared with PyTorch's own bfloat16 / float16 SDPA, the float32
#                   result rounded once, thread counts, and the dtype rules and messages.
mha_add_pytest(test_py_dtype)

# The numbers once more on each forced kernel path (the default run above uses the best one).
foreach(isa generic avx2)
  add_test(NAME test_py_dtype_${isa}
    COMMAND ${MHA_PYTHON} -m pytest -q -p no:cacheprovider
            -k "accuracy or rounded or threads or flash"
            ${CMAKE_CURRENT_SOURCE_DIR}/test_py_dtype.py
    WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
  set_tests_properties(test_py_dtype_${isa} PROPERTIES
    ENVIRONMENT "MHA_BIN=$<TARGET_FILE:mha_cli>;PYTHONDONTWRITEBYTECODE=1;PYTHONPATH=${CMAKE_SOURCE_DIR}/python;MHA_LIBRARY=$<TARGET_FILE:mha_shared>;MHA_ISA=${isa}"
    TIMEOUT 300)
endforeach()

# test_py_module_dtype.py  mha.MultiheadAttention(dtype=torch.bfloat16 / torch.float16) against
#                          torch's layer of that dtype and a float64 reference.
mha_add_pytest(test_py_module_dtype)

# test_py_autocast.py  mha.MultiheadAttention, the seed module and scaled_dot_product_attention
#                      under torch.autocast("cpu", dtype=bf16 / f16) against torch's (dtypes,
#                      accuracy, gradients in float32), autocast off bit for bit as outside.
mha_add_pytest(test_py_autocast)
