# tests/gemm_dtype.cmake - `mha bench --gemm ... --dtype` and `mha info`'s bf16 gemm line
# (tests/test_cli_gemm_dtype.py); the library side is tests/test_gemm_dtype.c.
mha_add_pytest(test_cli_gemm_dtype)
