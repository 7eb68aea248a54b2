# explain.cmake - `mha explain` (tools/cmd_explain.c and tools/explain_*.c). Included by
# tests/CMakeLists.txt.
if(TARGET mha_cli)
  # tests/test_cli_explain.py: the walkthrough's numbers against PyTorch 2.13 and the fused
  # kernel (built-in example, random layers with masks, causal, cross-attention, on every kernel
  # path), --step, --tiles, --html all or nothing, the check that fails, exit codes.
  mha_add_pytest(test_cli_explain)

  # The --html page in headless Chromium (Debian's, through the venv's playwright, as
  # viz_browser): every step a section with its numbers as coloured tables, the check section,
  # no request and nothing external in the file, no console error.
  add_test(NAME explain_browser COMMAND ${MHA_PYTHON}
    ${CMAKE_CURRENT_SOURCE_DIR}/browser/test_explain_html.py $<TARGET_FILE:mha_cli>
    ${CMAKE_CURRENT_BINARY_DIR}/explain_browser)
  set_tests_properties(explain_browser PROPERTIES TIMEOUT 300)
endif()
