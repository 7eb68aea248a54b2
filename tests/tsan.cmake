# tests/test_concurrent.c (several contexts on several pthreads) under ThreadSanitizer, on the
# library built with -fsanitize=thread (mha_tsan, CMakeLists.txt): any data race fails it.
add_executable(tsan_concurrent ${CMAKE_CURRENT_SOURCE_DIR}/test_concurrent.c)
target_include_directories(tsan_concurrent PRIVATE ${CMAKE_SOURCE_DIR}/src
  ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(tsan_concurrent PRIVATE mha_tsan)
add_test(NAME tsan_concurrent COMMAND tsan_concurrent)
set_tests_properties(tsan_concurrent PROPERTIES ENVIRONMENT "TSAN_OPTIONS=halt_on_error=1")
