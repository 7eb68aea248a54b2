# The thread cap once more with a huge $OMP_NUM_THREADS: the default must come out capped
# (tests/test_threads_cap.c), where it once made libgomp crash.
add_test(NAME test_threads_cap_omp_env COMMAND test_threads_cap)
set_tests_properties(test_threads_cap_omp_env PROPERTIES ENVIRONMENT "OMP_NUM_THREADS=100000")
