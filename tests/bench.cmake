# The benchmark scripts' own tests (nothing timed): test_bench_modern.py checks bench/modern.py's
# ratios and verdicts on made-up results, that `mha bench` accepts the commands it builds, and
# bench/torch_modern.py's masks and calls against its float64 reference (one tiny run each);
# test_bench_dtype.py runs bench/dtype.py --quick (issue 11's bf16 / f16 section: its tables,
# cells and commands), its ratios and verdicts on made-up results, and PyTorch's side in bf16
# and f16 (torch_modern.py --dtype, torch_module.py) against float64.
if(TARGET mha_cli)
  mha_add_pytest(test_bench_modern)
  mha_add_pytest(test_bench_dtype)
endif()
