# tests/decode.cmake - decoding with a kv cache (issue 10): the C tests are tests/test_decode.c
# (registered with every test_*.c); here `mha bench --core --decode`'s flags and report
# (tests/test_cli_decode.py), and test_decode under valgrind (the chunk kernels' edges, the
# cache object's allocation failures).
mha_add_pytest(test_cli_decode)

find_program(MHA_VALGRIND_DECODE valgrind)
if(MHA_VALGRIND_DECODE)
  add_test(NAME valgrind_test_decode
    COMMAND ${MHA_VALGRIND_DECODE} -q --error-exitcode=9 --leak-check=full
            --errors-for-leak-kinds=definite $<TARGET_FILE:test_decode>
    WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
  set_tests_properties(valgrind_test_decode PROPERTIES TIMEOUT 1500)
endif()
