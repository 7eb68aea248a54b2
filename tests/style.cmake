# The house style: .clang-format applied and lines of at most 100 characters (tests/style_check.sh).
add_test(NAME style_format COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/style_check.sh ${CMAKE_SOURCE_DIR})
