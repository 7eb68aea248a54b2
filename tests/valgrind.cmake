# Memcheck runs of a few test executables (the module, its framework hooks, checkpoint layouts and
# the untrusted-input readers among them) and of `mha info`. Valgrind's virtual CPU has no
# AVX-512, so these also prove that the library starts and picks the AVX2 path on a CPU
# without it (the AVX-512 table must never even be initialized there).
find_program(MHA_VALGRIND valgrind)
if(MHA_VALGRIND)
  foreach(t test_core test_golden test_module test_module_bind test_layers test_io)
    add_test(NAME valgrind_${t}
      COMMAND ${MHA_VALGRIND} -q --error-exitcode=9 --leak-check=full
              --errors-for-leak-kinds=definite $<TARGET_FILE:${t}>
      WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
  endforeach()
  add_test(NAME valgrind_mha_info
    COMMAND ${MHA_VALGRIND} -q --error-exitcode=9 $<TARGET_FILE:mha_cli> info)
  set_tests_properties(valgrind_mha_info PROPERTIES PASS_REGULAR_EXPRESSION "path: (avx2|generic)")
else()
  message(WARNING "valgrind not found: the memcheck tests are not registered")
endif()
