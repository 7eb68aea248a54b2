"""test_py_readme.py - README's "Use it from Python" works as written.

Every ```python block of that section runs as it stands, each in a new Python process in an
empty folder, with the test venv's Python (PyTorch 2.13, numpy) against this checkout's package
and library (PYTHONPATH and MHA_LIBRARY, set by mha_add_pytest). A block that does not mention
torch runs with torch made unimportable, as the NumPy path promises. The section comes first,
before the C one, and its blocks show every part of the API it describes.
"""
import os
import re
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")
TITLE = "Use it from Python"
NO_TORCH = "import sys\nsys.modules['torch'] = None  # import torch raises ImportError\n"


def readme():
    with open(README, encoding="utf-8") as f:
        return f.read()


def section(text, title):
    start = text.index("\n## " + title + "\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def blocks():
    return re.findall(r"```python\n(.*?)```", section(readme(), TITLE), re.S)


def block_id(code):
    first = [l for l in code.splitlines() if l and not l.startswith("import")][0]
    return first[:40]


def test_python_section_comes_first():
    text = readme()
    heads = re.findall(r"^## (.*)$", text, re.M)
    assert heads[0] == TITLE, f"README's first section is {heads[0]!r}, expected {TITLE!r}"
    assert "Use it from C" in heads, heads


# What the section's blocks must show: the API, each called at least once.
API = ["mha.MultiheadAttention(", "mha.MultiHeadAttention(", "backward()",
       "mha.functional.scaled_dot_product_attention(", "mha.attention(",
       "mha.attention_backward(", "mha.save_file(", "mha.load_file(", "mha.export(",
       "mha.MultiheadAttention.from_file(", "prefix=", "mha.set_num_threads(",
       "mha.viz.heatmap(", "mha.viz.save(", "mha.viz.show(", "mha.flash_attn_func(",
       "mha.flash_attn_varlen_func(", "mha.flash_attn_with_kvcache(", "torch.bfloat16"]


@pytest.mark.parametrize("call", API)
def test_section_shows(call):
    assert any(call in b for b in blocks()), f"no Python block of README's {TITLE!r} calls {call}"


@pytest.mark.parametrize("code", blocks(), ids=block_id)
def test_block_runs(code, tmp_path):
    prog = code if "torch" in code else NO_TORCH + code
    r = subprocess.run([sys.executable, "-c", prog], cwd=tmp_path, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=240)
    if r.returncode != 0:
        pytest.fail(f"README block failed (exit {r.returncode}"
                    f"{', torch unimportable' if prog is not code else ''}):\n{code}"
                    f"--- output ---\n{r.stdout}", pytrace=False)
