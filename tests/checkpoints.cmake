# tests/checkpoints.cmake - any checkpoint through `mha forward --prefix` (tests/test_checkpoints.py):
# whole PyTorch models of every layout mha reads, saved by safetensors.torch in float32, bfloat16
# and float16, against the same layers run in PyTorch 2.13; every dtype against NumPy and the
# safetensors package through ctypes on the library (MHA_LIB).
mha_add_pytest(test_checkpoints)
set_property(TEST test_checkpoints APPEND PROPERTY ENVIRONMENT "MHA_LIB=$<TARGET_FILE:mha_shared>")
