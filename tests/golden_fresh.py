"""golden_fresh.py - the committed fixtures are what the committed generator writes.

Regenerates every case of tests/golden/gen_golden.py into a temporary folder with PyTorch and
compares it with tests/golden/*.safetensors: the same files and tensor names, parameters,
inputs, masks and configuration bit for bit, and the float64 expectations within 1e-12
(relative to each tensor's largest value). A fixture edited by hand, or a generator changed
without regenerating, fails here.

Without torch (the test venv's PyTorch 2.13) it fails."""
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden")


def main():
    try:
        import numpy as np
        import torch  # noqa: F401
    except ImportError as e:
        print(f"golden_fresh: FAIL: {e} (run through `make test`, which sets up the test venv)")
        return 1
    sys.path.insert(0, HERE)
    from mha_py import load_safetensors

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, os.path.join(GOLDEN, "gen_golden.py"), tmp], check=True,
                       stdout=subprocess.DEVNULL)
        fresh = sorted(f for f in os.listdir(tmp) if f.endswith(".safetensors"))
        committed = sorted(f for f in os.listdir(GOLDEN) if f.endswith(".safetensors"))
        if fresh != committed:
            print(f"golden_fresh: files differ: generated {fresh}, committed {committed}")
            return 1
        bad = 0
        for f in fresh:
            a, b = load_safetensors(os.path.join(tmp, f)), load_safetensors(os.path.join(GOLDEN, f))
            if sorted(a) != sorted(b):
                print(f"golden_fresh: {f}: tensor names differ")
                bad += 1
                continue
            for name in a:
                x, y = a[name], b[name]
                if x.shape != y.shape or x.dtype != y.dtype:
                    print(f"golden_fresh: {f}: {name}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}")
                    bad += 1
                elif name.startswith("expect."):
                    scale = max(float(np.abs(y).max(initial=0)), 1e-300)
                    err = float(np.abs(x.astype(np.float64) - y).max(initial=0)) / scale
                    if not err <= 1e-12:
                        print(f"golden_fresh: {f}: {name}: relative difference {err:.3g}")
                        bad += 1
                elif not np.array_equal(x, y):
                    print(f"golden_fresh: {f}: {name}: values differ")
                    bad += 1
        print(f"golden_fresh: {len(fresh)} fixtures regenerated, {bad} differences")
        return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
