# Layers one way (issue 8): src/core/cpu.c is a CPU-detection leaf (no library header but
# internal.h); the kernels include no driver, io or viz header; core includes no driver header
# (mha_sgemm lives beside its driver in src/attn/gemm.c, mha_isa_supported with the tables).
add_test(NAME layers_kernels_one_way WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/src COMMAND sh -c "\
  bad=\$(grep -n '#include \"' core/cpu.c | grep -v '\"internal.h\"'; \
        grep -rn '#include \"[./]*\\(attn\\|io\\|viz\\)/' kernels core; \
        grep -ln '^mha_status mha_sgemm(' core/*.c; \
        grep -ln '^int mha_isa_supported(' core/*.c); \
  if [ -n \"\$bad\" ]; then echo \"layering violated:\"; echo \"\$bad\"; exit 1; fi")
