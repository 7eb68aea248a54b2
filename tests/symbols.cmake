# libmha.so exports exactly the functions that include/mha.h and include/mha_viz.h declare
# with MHA_API: nothing internal, nothing public missing.
add_test(NAME shared_symbols COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/symbols_test.sh
  $<TARGET_FILE:mha_shared> ${CMAKE_SOURCE_DIR}/include/mha.h
  ${CMAKE_SOURCE_DIR}/include/mha_viz.h)
