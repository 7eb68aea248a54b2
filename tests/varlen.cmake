# varlen.cmake - a memcheck run of test_varlen (packed variable-length batches: every sequence a
# view into the packed tensors, so a wrong offset reads or writes outside them). test_varlen
# itself is registered with every tests/test_*.c by tests/CMakeLists.txt.
find_program(MHA_VALGRIND valgrind)
if(MHA_VALGRIND)
  add_test(NAME valgrind_test_varlen
    COMMAND ${MHA_VALGRIND} -q --error-exitcode=9 --leak-check=full
            --errors-for-leak-kinds=definite $<TARGET_FILE:test_varlen>
    WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
endif()
