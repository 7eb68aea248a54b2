# tests/demo.cmake - `mha demo` (tools/cmd_demo.c, tools/demo_model.c), driven by
# tests/demo_test.sh against the mha binary built here:
#   test_demo_run        a fixed seed reaches >= 0.99 held-out accuracy, the last line is
#                        "accuracy: X", the three pictures exist and are non-empty, and a second
#                        run with the same seed on another thread count prints the same bytes;
#                        heads are numbered from 0; the saved layer records its heads (forward
#                        without --heads works, a wrong --heads exits 1);
#   test_demo_gradcheck  the whole model's gradient (embeddings, readout, softmax cross-entropy
#                        and mha's attention backward) against central finite differences;
#   test_demo_errors     usage errors exit 1, runtime failures exit 2, each with one
#                        "mha: error:" line.
if(PNG_FOUND)
  set(MHA_DEMO_PNG 1)
else()
  set(MHA_DEMO_PNG 0)
endif()
foreach(mode run gradcheck errors)
  add_test(NAME test_demo_${mode}
    COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/demo_test.sh ${mode} $<TARGET_FILE:mha_cli>
            ${CMAKE_CURRENT_BINARY_DIR}/demo_${mode} ${MHA_DEMO_PNG})
  # Passive OpenMP waiting: the run test also trains with 2 threads, and spinning threads on a
  # loaded 2-core CI machine turn its 0.2 s into 10+ s. Results do not depend on it.
  set_tests_properties(test_demo_${mode} PROPERTIES TIMEOUT 120
    ENVIRONMENT "OMP_WAIT_POLICY=passive")
endforeach()

# tests/test_cli_demo_tasks.py: every task of `mha demo --task` reaches >= 0.99 held-out accuracy
# with a fixed seed, its heads learn the task's pattern (positional, a match of contents, two
# heads splitting the work; checked on the attention `mha forward` recomputes from the saved
# layer), the loss is printed as it falls (plain lines, a redrawn line on a terminal, a
# sparkline), --list-tasks, unknown tasks, per-task gradient checks and pictures.
mha_add_pytest(test_cli_demo_tasks)
