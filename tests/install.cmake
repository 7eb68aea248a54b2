# make install into a temporary prefix, then compile examples/quickstart.c via pkg-config.
add_test(NAME install_pkgconfig
  COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/install_test.sh ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
