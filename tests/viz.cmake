# viz.cmake - the renderers' checks that need more than C: the SVG parsed as XML by Python, and
# the HTML page opened in headless Chromium (tests/browser). Included by tests/CMakeLists.txt.
if(TARGET test_viz)
  if(PNG_FOUND)
    target_compile_definitions(test_viz PRIVATE MHA_TEST_PNG=1)
  endif()

  # The SVG is well-formed XML with one rect per weight.
  if(EXISTS /usr/bin/python3)
    add_test(NAME viz_svg_xml COMMAND /bin/sh -c
      "\"$1\" --write-svg \"$2\" && /usr/bin/python3 \"$3\" \"$2\" 72"
      sh $<TARGET_FILE:test_viz> ${CMAKE_CURRENT_BINARY_DIR}/viz_sample.svg
      ${CMAKE_CURRENT_SOURCE_DIR}/viz_svg_check.py)
  endif()

  # The HTML page in headless Chromium: no console error, no network request, hovering a
  # token highlights its row, the screenshot is not blank. Runs `npm ci` in tests/browser when
  # node_modules is missing. Exit 77 (skip) without chromium/node/npm unless
  # MHA_REQUIRE_BROWSER is set in the environment (CI), which turns the skip into a failure.
  add_test(NAME viz_browser COMMAND /bin/sh ${CMAKE_CURRENT_SOURCE_DIR}/browser/run.sh
    $<TARGET_FILE:test_viz> ${CMAKE_CURRENT_BINARY_DIR}/viz_browser)
  set_tests_properties(viz_browser PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300)
endif()

# `mha viz` end to end (exit codes, messages, every format); fixtures made with numpy.
if(TARGET mha_cli AND EXISTS /usr/bin/python3)
  add_test(NAME viz_cli COMMAND /bin/sh ${CMAKE_CURRENT_SOURCE_DIR}/viz_cli.sh
    $<TARGET_FILE:mha_cli> ${CMAKE_CURRENT_BINARY_DIR}/viz_cli)
endif()
