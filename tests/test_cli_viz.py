"""test_cli_viz.py - `mha viz`: output names and formats, token files that are not regular
files, head numbering, and the PNG's text, end to end through the binary.

Run as `MHA_BIN=build/mha build/venv/bin/python -m pytest -q tests/test_cli_viz.py` (CTest does
it via tests/viz.cmake). Needs numpy only; fixtures are written with numpy.
"""
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mha_py  # noqa: E402

L, E = 5, 8


def mha_bin():
    b = os.environ.get("MHA_BIN")
    if not b or not os.path.isfile(b) or not os.access(b, os.X_OK):
        pytest.fail(f"MHA_BIN must name the built mha binary (got {b!r})")
    return b


def run(*args, timeout=60):
    """Runs mha with args; a run that blocks fails the test after timeout seconds."""
    p = subprocess.run([mha_bin(), *map(str, args)], capture_output=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr.decode()


@pytest.fixture
def base(tmp_path):
    """The arguments of a small self-attention layer (L = 5, E = 8, 2 heads) in tmp_path."""
    r = np.random.default_rng(3)
    mha_py.save_safetensors(tmp_path / "w.safetensors", {
        "in_proj_weight": r.standard_normal((3 * E, E)).astype(np.float32),
        "in_proj_bias": np.zeros(3 * E, np.float32),
        "out_proj.weight": r.standard_normal((E, E)).astype(np.float32),
        "out_proj.bias": np.zeros(E, np.float32)})
    np.save(tmp_path / "x.npy", r.standard_normal((L, E)).astype(np.float32))
    (tmp_path / "tok.txt").write_text("the\ncat\nsat\non\nmat\n")
    os.chdir(tmp_path)
    return ["viz", "--weights", "w.safetensors", "--heads", "2", "--query", "x.npy"]


def one_error(err, code):
    lines = err.splitlines()
    assert lines and lines[0].startswith("mha: error: "), err
    assert len(lines) == 1 or (code == 1 and len(lines) == 2 and lines[1].startswith("hint: ")), err
    return lines[0]


# ---- output names and formats --------------------------------------------------------------
@pytest.mark.parametrize("extra", [[], ["--format", "term"], ["--all"]])
def test_unknown_extension_is_refused(base, tmp_path, extra):
    code, out, err = run(*base, *extra, "--out", "a.jpg")
    assert code == 1, err
    msg = one_error(err, 1)
    for ext in (".txt", ".svg", ".png", ".html"):
        assert ext in msg, msg
    assert not (tmp_path / "a.jpg").exists() and out == b""


@pytest.mark.parametrize("name,magic", [("A.PNG", b"\x89PNG"), ("b.Svg", b"<?xml"),
                                        ("c.HTM", b"<!DOCTYPE"), ("d.TXT", b"average")])
def test_extension_chooses_the_format(base, tmp_path, name, magic):
    code, _, err = run(*base, "--out", name)
    assert code == 0, err
    assert (tmp_path / name).read_bytes().startswith(magic)


@pytest.mark.parametrize("fmt", ["svg", "png", "html"])
def test_format_without_out_hints_its_own_extension(base, fmt):
    code, _, err = run(*base, "--format", fmt)
    assert code == 1
    one_error(err, 1)
    assert err.splitlines()[1] == f"hint: e.g. --out attention.{fmt}", err


def test_format_and_extension_must_agree(base, tmp_path):
    code, _, err = run(*base, "--format", "png", "--out", "a.svg")
    assert code == 1 and "a.svg" in one_error(err, 1) and ".png" in err
    assert not (tmp_path / "a.svg").exists()
    assert run(*base, "--format", "term", "--out", "t.txt")[0] == 0


# ---- token files ---------------------------------------------------------------------------
def test_tokens_from_a_device_are_refused(base):
    code, _, err = run(*base, "--tokens", "/dev/zero", timeout=30)
    assert code == 2
    assert "/dev/zero: got a character device, expected a regular file" in one_error(err, 2)


def test_tokens_from_a_fifo_do_not_hang(base, tmp_path):
    os.mkfifo(tmp_path / "fifo")  # nobody writes: opening it blocking would wait forever
    code, _, err = run(*base, "--tokens", "fifo", timeout=30)
    assert code == 2
    assert "fifo: got a FIFO, expected a regular file" in one_error(err, 2)


def test_tokens_from_a_directory_are_refused(base, tmp_path):
    (tmp_path / "d").mkdir()
    code, _, err = run(*base, "--tokens", "d")
    assert code == 2 and "got a directory" in one_error(err, 2)


def test_huge_token_file_is_refused_before_reading(base, tmp_path):
    with open(tmp_path / "huge.txt", "wb") as f:  # sparse: no disk, no time
        f.truncate((64 << 20) + 1)
    code, _, err = run(*base, "--tokens", "huge.txt", timeout=30)
    assert code == 2
    assert "got 67108865 bytes, expected at most 64 MiB" in one_error(err, 2)


def test_regular_token_file_labels_the_rows(base):
    code, out, err = run(*base, "--tokens", "tok.txt", "--ascii")
    assert code == 0, err
    assert b"cat |" in out


def test_cross_attention_keys_are_not_labelled_with_the_query_tokens(base):
    # L == S: the library's rule "key_tokens NULL, L == S: the query tokens" is for
    # self-attention; another sequence's keys (--key, --value without --key-tokens) are
    # positions, also in the HTML page's data
    code, out, err = run(*base, "--key", "x.npy", "--value", "x.npy", "--tokens", "tok.txt",
                         "--ascii")
    assert code == 0, err
    assert b"cat |" in out and b"Key Position" in out and b"the cat" not in out
    assert run(*base, "--key", "x.npy", "--value", "x.npy", "--tokens", "tok.txt", "--out",
               "c.html")[0] == 0
    page = open("c.html", encoding="utf-8").read()
    assert '"k":["the"' not in page and '"q":["the","cat","sat","on","mat"]' in page
    code, out, err = run(*base, "--tokens", "tok.txt", "--ascii")  # self-attention: both
    assert code == 0 and b"Key Position" not in out, err


# ---- heads are numbered from 0 in every output ---------------------------------------------
def test_heads_numbered_from_zero_everywhere(base, tmp_path):
    code, out, err = run(*base, "--all", "--ascii", "--width", "120")
    assert code == 0, err
    assert b"head 0" in out and b"head 1" in out and b"head 2" not in out
    assert run(*base, "--all", "--out", "a.svg")[0] == 0
    svg = (tmp_path / "a.svg").read_text()
    assert ">head 0</text>" in svg and ">head 1</text>" in svg and "head 2" not in svg
    assert run(*base, "--out", "a.html")[0] == 0
    assert '"heads":["head 0","head 1"]' in (tmp_path / "a.html").read_text()
    code, _, err = run(*base, "--head", "2")
    assert code == 2 and "expected 0 .. 1" in err


# ---- the PNG's text ------------------------------------------------------------------------
def png_pixels(path):
    """Decodes an 8-bit RGB PNG (mha's: one IDAT stream, any filter) to rows of bytes."""
    d = open(path, "rb").read()
    assert d[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(d):
        n, kind = struct.unpack(">I", d[pos:pos + 4])[0], d[pos + 4:pos + 8]
        body = d[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour == 2
        if kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, stride, rows, prev, p = zlib.decompress(idat), w * 3, [], bytearray(w * 3), 0
    for _ in range(h):
        f, line = raw[p], bytearray(raw[p + 1:p + 1 + stride])
        p += 1 + stride
        for i in range(stride):
            a, b, c = (line[i - 3] if i >= 3 else 0), prev[i], (prev[i - 3] if i >= 3 else 0)
            if f == 4:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
            else:
                pred = [0, a, b, (a + b) // 2][f]
            line[i] = (line[i] + pred) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, rows


def changed(a, b):
    """The (x, y) of the pixels where two images of one size differ, with both colours."""
    (w, h, ra), (w2, h2, rb) = a, b
    assert (w, h) == (w2, h2), "the layout changed"
    return [(x, y, ra[y][3 * x:3 * x + 3], rb[y][3 * x:3 * x + 3])
            for y in range(h) if ra[y] != rb[y] for x in range(w)
            if ra[y][3 * x:3 * x + 3] != rb[y][3 * x:3 * x + 3]]


TEXT = {b"\xff\xff\xff", b"\x1e\x1e\x1e"}  # paper and the text's ink


def test_png_draws_the_title(base, tmp_path):
    for t in ("AAAA", "BBBB"):
        assert run(*base, "--out", f"{t}.png", "--title", f"attention {t}")[0] == 0
    diff = changed(png_pixels(tmp_path / "AAAA.png"), png_pixels(tmp_path / "BBBB.png"))
    assert diff, "--title is not drawn"
    # the title: twice the font's size at (8, 8), 12 px per character; only "AAAA" changed
    assert all(8 + 12 * 10 <= x < 8 + 12 * 14 and 8 <= y < 26 for x, y, _, _ in diff)


def test_png_draws_the_tokens(base, tmp_path):
    (tmp_path / "tok2.txt").write_text("the\ncat\nsit\non\nmat\n")
    for t in ("tok", "tok2"):
        assert run(*base, "--out", f"{t}.png", "--tokens", f"{t}.txt")[0] == 0
    diff = changed(png_pixels(tmp_path / "tok.png"), png_pixels(tmp_path / "tok2.png"))
    assert diff, "--tokens is not drawn"
    assert all(p in TEXT and q in TEXT for _, _, p, q in diff), "a cell changed, not only text"
    code, _, err = run(*base, "--out", "none.png")
    assert code == 0, err
    assert png_pixels(tmp_path / "none.png")[0] != png_pixels(tmp_path / "tok.png")[0]


def test_png_too_large_names_the_option(base, tmp_path):
    # 300 tokens of 64 px: beyond the PNG's 16384 pixels a side. The library's message names
    # its field (opts.cell_px); the command's names the option typed (--cell-px).
    np.save(tmp_path / "x300.npy",
            np.random.default_rng(5).standard_normal((300, E)).astype(np.float32))
    code, out, err = run(*base[:-1], "x300.npy", "--out", "a.png", "--cell-px", "64")
    if "png support not built" in err:
        pytest.skip("built without libpng")
    msg = one_error(err, 2)
    assert code == 2 and "16384" in msg and "use a smaller --cell-px" in msg, msg
    assert "opts." not in msg, msg
    assert not os.path.exists("a.png") and not [f for f in os.listdir(".") if ".mha-" in f]
