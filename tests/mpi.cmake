# The MPI tests (tests/test_mpi_*.c): each built against libmha_mpi.a and run under mpirun with 1,
# 2, 3 and 4 ranks (oversubscribed: the machine may have fewer cores), with a
# timeout, since a bug in the ranks' agreement shows as a hang. Without MPI they cannot run, and
# that is a failing test of its own (as deps_libpng): `make test` installs Open MPI first.
if(MPI_C_FOUND)
  file(GLOB MHA_MPI_TEST_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/test_mpi_*.c)
  foreach(src ${MHA_MPI_TEST_SOURCES})
    get_filename_component(name ${src} NAME_WE)
    add_executable(${name} ${src})
    target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/include ${CMAKE_SOURCE_DIR}/src
      ${CMAKE_CURRENT_SOURCE_DIR})
    target_link_libraries(${name} PRIVATE mha_mpi)
    foreach(np 1 2 3 4)
      add_test(NAME ${name}_np${np}
        COMMAND ${MPIEXEC_EXECUTABLE} --allow-run-as-root --oversubscribe ${MPIEXEC_NUMPROC_FLAG}
          ${np} $<TARGET_FILE:${name}>
        WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
      # two threads per rank up to 2 ranks (the merges and the core on threads), then one
      if(np LESS_EQUAL 2)
        set(nt 2)
      else()
        set(nt 1)
      endif()
      set_tests_properties(${name}_np${np} PROPERTIES TIMEOUT 120 PROCESSORS ${np}
        ENVIRONMENT "OMP_NUM_THREADS=${nt};OMP_WAIT_POLICY=passive")
    endforeach()
  endforeach()
else()
  add_test(NAME deps_mpi COMMAND sh -c
    "echo 'MPI was not found when configuring: apt-get install libopenmpi-dev openmpi-bin, then reconfigure'; exit 1")
endif()

# Everything but libmha_mpi builds without MPI (tests/build_without_mpi.sh: the library and the
# CLI, configured with MPI disabled in a temporary directory).
add_test(NAME build_without_mpi COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/build_without_mpi.sh
  ${CMAKE_SOURCE_DIR})
set_tests_properties(build_without_mpi PROPERTIES TIMEOUT 600 PROCESSORS 2)

# libmha_mpi.so exports exactly the public API: mha.h's, mha_viz.h's and mha_mpi.h's functions.
if(MPI_C_FOUND)
  add_test(NAME shared_symbols_mpi COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/symbols_test.sh
    $<TARGET_FILE:mha_mpi_shared> ${CMAKE_SOURCE_DIR}/include/mha.h
    ${CMAKE_SOURCE_DIR}/include/mha_viz.h ${CMAKE_SOURCE_DIR}/include/mha_mpi.h)
endif()

# make install, then a program built with `pkg-config mha_mpi` runs under mpirun (2 ranks).
if(MPI_C_FOUND)
  add_test(NAME install_pkgconfig_mpi
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/install_mpi_test.sh ${CMAKE_BINARY_DIR})
  set_tests_properties(install_pkgconfig_mpi PROPERTIES TIMEOUT 120 PROCESSORS 2)
endif()
