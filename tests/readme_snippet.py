"""readme_snippet.py MHA_BIN - README's "Bring a layer over from PyTorch" works as written.

Takes the section's Python block and its `mha forward ...` command from README.md exactly as
they stand there, runs the block in an empty folder with the test venv's Python (PyTorch 2.13,
safetensors, numpy: what the README tells a reader to pip install), runs the command with the
mha binary built here, and checks that y.npy is what the saved layer gives in PyTorch,
`layer(x, x, x)[0]`, within the README's promise (about 1e-6 relative).
"""
import os
import re
import shlex
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")


def section(text, title):
    start = text.index("\n## " + title + "\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def main():
    mha = os.path.abspath(sys.argv[1])
    sec = section(open(README, encoding="utf-8").read(), "Bring a layer over from PyTorch")
    code = re.search(r"```python\n(.*?)```", sec, re.S).group(1)
    cmd = re.search(r"`(mha forward [^`]*)`", sec).group(1)
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-c", code], cwd=d, check=True)
        argv = shlex.split(cmd)
        argv[0] = mha
        subprocess.run(argv, cwd=d, check=True)
        # What the README says it equals: layer(x, x, x)[0] of the layer the block saved.
        sd = load_file(os.path.join(d, "layer.safetensors"))
        E = sd["out_proj.weight"].shape[0]
        H = int(argv[argv.index("--heads") + 1])
        layer = torch.nn.MultiheadAttention(E, H, batch_first=True)
        layer.load_state_dict(sd)
        x = torch.from_numpy(np.load(os.path.join(d, "x.npy")))
        with torch.no_grad():
            want = layer(x, x, x)[0].numpy().astype(np.float64)
        got = np.load(os.path.join(d, "y.npy"))
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    print(f"readme_snippet: {cmd}\nreadme_snippet: y.npy {got.shape} vs layer(x, x, x)[0]: "
          f"largest relative error {rel:.2e}")
    if got.shape != want.shape or not rel < 1e-5:
        print("readme_snippet: FAIL")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
