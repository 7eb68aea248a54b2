# tests/cli_mpi.cmake - `mpirun -n P mha forward / backward / bench` (tests/test_cli_mpi.py), when
# CMake found MPI (without it tests/mpi.cmake's check fails: `make test` installs Open MPI). Each
# mpirun in the test has a timeout of its own; TIMEOUT bounds the whole file.
if(MPI_C_FOUND)
  mha_add_pytest(test_cli_mpi)
  set_property(TEST test_cli_mpi APPEND PROPERTY ENVIRONMENT "MHA_MPIEXEC=${MPIEXEC_EXECUTABLE}")
  set_tests_properties(test_cli_mpi PROPERTIES TIMEOUT 600 PROCESSORS 2)
endif()
