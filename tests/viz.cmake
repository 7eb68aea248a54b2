# viz.cmake - the renderers' checks that need more than C: the SVG parsed as XML by Python, and
# the HTML page opened in headless Chromium (tests/browser). Included by tests/CMakeLists.txt.
if(TARGET test_viz)
  if(PNG_FOUND)
    target_compile_definitions(test_viz PRIVATE MHA_TEST_PNG=1)
  endif()

  # The SVG is well-formed XML with one rect per weight.
  add_test(NAME viz_svg_xml COMMAND /bin/sh -c
    "\"$1\" --write-svg \"$2\" && \"$4\" \"$3\" \"$2\" 72"
    sh $<TARGET_FILE:test_viz> ${CMAKE_CURRENT_BINARY_DIR}/viz_sample.svg
    ${CMAKE_CURRENT_SOURCE_DIR}/viz_svg_check.py ${MHA_PYTHON})

  # The HTML page in headless Chromium, driven by Python's playwright from the test venv
  # (${MHA_PYTHON}): no console error, no network request, hovering a token highlights its row,
  # the screenshot is not blank. The browser is Debian's chromium ($MHA_CHROMIUM, default
  # /usr/bin/chromium), never a downloaded one; without it or playwright the test fails, saying
  # what to install.
  add_test(NAME viz_browser COMMAND ${MHA_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/browser/test_html.py
    $<TARGET_FILE:test_viz> ${CMAKE_CURRENT_BINARY_DIR}/viz_browser)
  set_tests_properties(viz_browser PROPERTIES TIMEOUT 300)

  # The page of a 2000 x 2000 view (two heads) in the same Chromium: small, drawn within 30 s,
  # downsampled to 8 x 8 blocks and saying so, each block's tooltip as numpy computes it.
  add_test(NAME viz_browser_large COMMAND ${MHA_PYTHON}
    ${CMAKE_CURRENT_SOURCE_DIR}/browser/test_html_large.py $<TARGET_FILE:test_viz>
    ${CMAKE_CURRENT_BINARY_DIR}/viz_browser_large)
  set_tests_properties(viz_browser_large PROPERTIES TIMEOUT 300)
endif()

# `mha viz` end to end (exit codes, messages, every format); fixtures made with numpy.
if(TARGET mha_cli)
  add_test(NAME viz_cli COMMAND /bin/sh ${CMAKE_CURRENT_SOURCE_DIR}/viz_cli.sh
    $<TARGET_FILE:mha_cli> ${CMAKE_CURRENT_BINARY_DIR}/viz_cli ${MHA_PYTHON})
endif()

# pytest files run with the test venv's Python (numpy only) against the mha binary built here:
# test_cli_viz.py  `mha viz` output names, token files that are not regular files, head
#                  numbering, the PNG's text;
# test_cli_bench.py `mha bench` progress on stderr when it is a terminal (a pty), else nothing.
if(TARGET mha_cli)
  mha_add_pytest(test_cli_viz)
  mha_add_pytest(test_cli_bench)
endif()
