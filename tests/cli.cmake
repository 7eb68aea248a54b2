# tests/cli.cmake - the command-line contract of `mha forward` / `mha backward` (tests/test_cli.py),
# run with the test venv's Python (PyTorch 2.13) against the mha binary built here.
mha_add_pytest(test_cli)

# The round trips against torch once more on each forced kernel path (the default run above uses
# the best one); a path this machine's CPU cannot run is skipped (the only skip: no hardware).
foreach(isa generic avx2)
  add_test(NAME test_cli_roundtrip_${isa}
    COMMAND ${MHA_PYTHON} -m pytest -q -p no:cacheprovider -k "round_trip or scale"
            ${CMAKE_CURRENT_SOURCE_DIR}/test_cli.py
    WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
  set_tests_properties(test_cli_roundtrip_${isa} PROPERTIES
    ENVIRONMENT "MHA_BIN=$<TARGET_FILE:mha_cli>;PYTHONDONTWRITEBYTECODE=1;MHA_ISA=${isa}"
    TIMEOUT 300)
endforeach()

# tests/test_cli_outputs.py: output files all or nothing (special files, aliases, umask, long
# names, a full disk, a failed rename) and the number of heads a weights file records;
# tests/test_cli_core.py: the library's thread limit through `mha forward` and `mha info`.
mha_add_pytest(test_cli_outputs)
mha_add_pytest(test_cli_core)

# tests/test_cli_dtype.py: --dtype f32|bf16|f16 on mha forward, backward and bench (the module),
# float16 .npy inputs; accuracy against torch's layer of the dtype and a float64 reference.
mha_add_pytest(test_cli_dtype)
