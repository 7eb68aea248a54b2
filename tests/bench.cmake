# The benchmark scripts' own tests (nothing timed): test_bench_modern.py checks bench/modern.py's
# ratios and verdicts on made-up results, that `mha bench` accepts the commands it builds, and
# bench/torch_modern.py's masks and calls against its float64 reference (one tiny run each).
if(TARGET mha_cli)
  mha_add_pytest(test_bench_modern)
endif()
