"""test_py_viz.py - mha.viz: the terminal heatmap (shades, colour only on a terminal without
NO_COLOR, tokens), save() as SVG (parsed: L*S cells per panel), PNG (decoded: the documented
geometry and colours) and HTML, show() as an iframe whose page runs in a browser, bad inputs,
and that importing mha.viz does not import torch.
"""
import ctypes
import html
import html.parser
import io
import os
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib

import numpy as np
import pytest
import torch

import mha
import mha.viz

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON_DIR = os.path.join(os.path.dirname(HERE), "python")
TOKENS = ["the", "cat", "sat", "on", "a", "mat"]


def weights(H, L, S, seed=0):
    w = np.random.default_rng(seed).random((H, L, S)).astype(np.float32)
    return w / w.sum(-1, keepdims=True)


def leftovers(d):
    return sorted(f for f in os.listdir(d) if f.startswith(".mha-"))


# ------------------------------------------------------------------------------------------
# terminal
# ------------------------------------------------------------------------------------------
def test_heatmap_text(capsys):
    w = np.zeros((6, 6), np.float32)
    w[np.arange(6), np.arange(6)] = 1.0
    w[1, 0], w[2, 0], w[3, 0] = 0.2, 0.4, 0.6  # every shade of the scale
    assert mha.viz.heatmap(w, tokens=TOKENS) is None
    out = capsys.readouterr().out
    for shade in "░▒▓█":
        assert shade in out
    for t in TOKENS:
        assert t in out  # query labels, rows
    assert "\x1b[" not in out  # not a terminal: no colour
    assert out.count("\n") >= 10


def test_extreme_and_tiny_weights(tmp_path, capsys):
    # a range wider than a float holds (-3e38 .. 3e38) is drawn, not a crash (the shade index
    # was NaN); the highest cell is the darkest, in the terminal and in the svg
    w = np.array([[-3e38, 3e38], [0, 1]], np.float32)
    mha.viz.heatmap(w)
    assert "█" in capsys.readouterr().out
    mha.viz.save(w, str(tmp_path / "x.svg"))
    svg = (tmp_path / "x.svg").read_text()
    assert svg.count("#440154") < 4, "every cell the lowest colour"
    # a long sequence's weights, all below 0.01: the legend shows their values, not 0.00
    small = np.full((1, 300), 1 / 300, np.float32)
    small[0, 0] = 3 / 300
    mha.viz.heatmap(small)
    legend = [x for x in capsys.readouterr().out.splitlines() if x.startswith("shades")][0]
    assert "<0.00," not in legend and not legend.endswith("to 0.00"), legend  # was so


def test_save_takes_bytes_paths(tmp_path):
    mha.viz.save(np.eye(3, dtype=np.float32), os.fsencode(tmp_path / "b.svg"))
    assert (tmp_path / "b.svg").read_text().startswith("<")


def test_heatmap_heads_and_batches(capsys):
    w = weights(3, 4, 5)
    mha.viz.heatmap(w)
    out = capsys.readouterr().out
    assert all(f"head {h}" in out for h in range(3))
    mha.viz.heatmap(w, head=1)
    out = capsys.readouterr().out
    assert "head 1" in out and "head 0" not in out and "head 2" not in out
    mha.viz.heatmap(w, head="average")
    assert "average of 3 heads" in capsys.readouterr().out
    # [B, H, L, S] torch tensor (with autograd history), batch picked by keyword
    t = torch.tensor(np.stack([w, w[::-1].copy()]), requires_grad=True) * 1
    mha.viz.heatmap(t, head=0, batch=1)
    got = capsys.readouterr().out
    mha.viz.heatmap(w[2], head=0)
    assert got == capsys.readouterr().out
    # cross-attention tokens: a pair
    mha.viz.heatmap(w[0], tokens=(["q0", "q1", "q2", "q3"], list("vwxyz")))
    out = capsys.readouterr().out
    assert "q3" in out and all(c in out for c in "vwxyz")
    # a pair without key tokens, L == S: the keys are positions, not the queries' tokens (a
    # single list labels both: self-attention)
    sq = weights(1, 4, 4)[0]
    mha.viz.heatmap(sq, tokens=(list("abcd"), None))
    out = capsys.readouterr().out
    assert "Key Position" in out and "    d " in out
    mha.viz.heatmap(sq, tokens=list("abcd"))
    out = capsys.readouterr().out
    assert "Key Position" not in out and "    d " in out
    # a NUL inside a token is drawn as "?" (it ended the C string: "a\0b" became "a")
    mha.viz.heatmap(sq, tokens=["a\0b", "b", "c", "d"])
    assert "  a?b " in capsys.readouterr().out


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_heatmap_colour_only_on_a_terminal(monkeypatch):
    w = weights(2, 4, 4)
    for no_color, escapes in ((None, True), ("1", False)):
        if no_color is None:
            monkeypatch.delenv("NO_COLOR", raising=False)
        else:
            monkeypatch.setenv("NO_COLOR", no_color)
        out = Tty()
        monkeypatch.setattr(sys, "stdout", out)
        mha.viz.heatmap(w, tokens=TOKENS[:4])
        monkeypatch.undo()
        text = out.getvalue()
        assert ("\x1b[38;2;" in text or "\x1b[48;2;" in text) == escapes, text
        assert "cat" in text


# ------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------
def svg_cells(path):
    root = ET.parse(path).getroot()
    panels = [g for g in root.iter() if g.tag.endswith("}g") and g.get("class") == "panel"]
    return [[r for r in p.iter() if r.tag.endswith("}rect") and r.get("class") == "cell"]
            for p in panels]


def test_save_svg(tmp_path):
    p = tmp_path / "w.svg"
    mha.viz.save(weights(3, 4, 5), p, tokens=(["a", "b", "c", "d"], None))
    panels = svg_cells(p)
    assert [len(c) for c in panels] == [4 * 5] * 3  # every head, L*S cells each
    assert 'query 3 "d" → key 4' in p.read_text()
    mha.viz.save(weights(3, 4, 5), p, head=2)
    assert [len(c) for c in svg_cells(p)] == [4 * 5]
    mha.viz.save(torch.tensor(weights(1, 6, 6)[0]), str(p), tokens=TOKENS)
    assert [len(c) for c in svg_cells(p)] == [36]
    assert 'query 5 "mat" → key 5 "mat"' in p.read_text()


def png_decode(data):
    """(width, height, rows of RGB bytes) of an 8-bit RGB, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, colour, _, _, interlace = ihdr
    assert (depth, colour, interlace) == (8, 2, 0)  # 8-bit RGB
    raw, stride, rows, prev = zlib.decompress(idat), 3 * w, [], bytearray(3 * w)
    assert len(raw) == h * (1 + stride)
    for y in range(h):
        f, line = raw[y * (1 + stride)], bytearray(raw[y * (1 + stride) + 1:(y + 1) * (1 + stride)])
        for x in range(stride):
            a = line[x - 3] if x >= 3 else 0
            b, c = prev[x], prev[x - 3] if x >= 3 else 0
            pred = [0, a, b, (a + b) // 2,
                    min((a, b, c), key=lambda v: abs(a + b - c - v))][f]
            line[x] = (line[x] + pred) & 255
        rows.append(line)
        prev = line
    return w, h, rows


def viz_color(t):
    """mha_viz_color(t): the colour map of every renderer (a handle of our own, so that the
    package's prototypes stay as they are)."""
    f = ctypes.CDLL(mha.LIBRARY_PATH).mha_viz_color
    f.argtypes, f.restype = [ctypes.c_float, ctypes.POINTER(ctypes.c_uint8 * 3)], None
    rgb = (ctypes.c_uint8 * 3)()
    f(t, ctypes.byref(rgb))
    return tuple(rgb)


def test_save_png_geometry_and_colours(tmp_path):
    """mha_viz.h's geometry: c = 32 (512 / 6 clamped), labels every row, vmin = 0,
    vmax = 0.5 ("0", "0.25", "0.5"), no title."""
    L = S = 6
    w = np.full((1, L, S), 0.1, np.float32)
    w[0, np.arange(L), np.arange(S)] = 0.5
    toks = ["the", "cat", "sat", "on", "a", "doormat"]
    p = tmp_path / "w.png"
    mha.viz.save(w, p, tokens=toks)
    width, height, rows = png_decode(p.read_bytes())
    c, q = 32, len("doormat")
    pw = 6 * q + 4 + max(S * c, 6 * len("head 0"))
    ph = 13 + L * c + 4 + 6 * q
    assert (width, height) == (16 + max(pw, 6 * len("00.250.5") + 24), 8 + ph + 40)
    for i, j in ((0, 0), (2, 3), (5, 5)):  # the centre of cell (i, j)
        x = 8 + 6 * q + 4 + j * c + c // 2
        y = 8 + 13 + i * c + c // 2
        assert tuple(rows[y][3 * x:3 * x + 3]) == viz_color(float(w[0, i, j]) / 0.5)

    # every head in a grid: ceil(sqrt(3)) = 2 columns, 2 rows
    mha.viz.save(np.concatenate([w] * 3), p, tokens=toks)
    width, height, _ = png_decode(p.read_bytes())
    assert (width, height) == (16 + 2 * pw + 12, 8 + 2 * ph + 12 + 40)


def test_save_html_and_show(tmp_path):
    w = weights(2, 6, 6)
    for ext in (".html", ".htm", ".HTML"):
        mha.viz.save(w, tmp_path / f"w{ext}", tokens=TOKENS)
    page = (tmp_path / "w.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script>" in page
    assert all(f'"{t}"' in page for t in TOKENS)
    shown = mha.viz.show(w, TOKENS)
    assert shown.html == page  # the same renderer, byte for byte
    assert (tmp_path / "w.htm").read_text() == page
    shown.save(tmp_path / "again.html")
    assert (tmp_path / "again.html").read_text() == page
    assert repr(shown) == "<mha.viz.Page: 2 heads, 6 queries x 6 keys>"


class Attrs(html.parser.HTMLParser):
    def handle_starttag(self, tag, attrs):
        self.tags = getattr(self, "tags", []) + [(tag, dict(attrs))]


def test_show_repr_html_is_an_iframe():
    shown = mha.viz.show(torch.tensor(weights(3, 5, 5))[None], TOKENS[:5])
    r = shown._repr_html_()
    parser = Attrs()
    parser.feed(r)
    (tag, attrs), = parser.tags  # one element: the page is escaped inside its attribute
    assert tag == "iframe" and attrs["srcdoc"] == shown.html
    assert "allow-scripts" in attrs["sandbox"]
    assert f"height: {shown.height()}px" in attrs["style"] and 400 <= shown.height() <= 1200
    assert html.escape(shown.html, quote=True) in r


def test_repr_html_runs_its_script_in_a_browser():
    """The notebook's view: the iframe of _repr_html_ in Chromium (as tests/browser), its
    script builds the head selector (one button per head and one for the average)."""
    from playwright.sync_api import sync_playwright
    sys.path.insert(0, os.path.join(HERE, "browser"))
    from test_html import CHROMIUM_ARGS
    chromium = os.environ.get("MHA_CHROMIUM") or "/usr/bin/chromium"
    # the last token's 16th character is an emoji: a label cut by UTF-16 units split it
    long = "a" * 14 + "\U0001F600" + "xy"
    shown = mha.viz.show(weights(3, 4, 4), TOKENS[:3] + [long])
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors = []
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.set_content(f"<html><body>{shown._repr_html_()}</body></html>")
            frame = page.frame_locator("iframe")
            frame.locator("#btn-avg").wait_for(timeout=30000)
            assert frame.locator("#btn-2").count() == 1
            assert frame.locator("text=cat").count() >= 1
            labels = frame.locator("text").all_text_contents()
            assert "a" * 14 + "\U0001F600\u2026" in labels, labels  # cut after the emoji
            assert not any(any(0xD800 <= ord(ch) <= 0xDFFF for ch in x) for x in labels)
            assert errors == []
        finally:
            browser.close()


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
def test_bad_inputs(tmp_path, capsys):
    w = weights(2, 3, 4)
    cases = [
        (lambda: mha.viz.save(w, tmp_path / "w.jpg"),
         r"save: path: got '.*w\.jpg', expected a name ending in \.svg, \.png, \.html, \.htm"),
        (lambda: mha.viz.heatmap(w[0, 0]), r"heatmap: weights\.ndim: got 1, expected 2"),
        (lambda: mha.viz.heatmap(w[None, None]), r"weights\.ndim: got 5"),
        (lambda: mha.viz.heatmap(w[None], batch=1), r"heatmap: batch: got 1, expected 0 <= "
                                                    r"batch < 1"),
        (lambda: mha.viz.heatmap(w, batch=1), r"batch: got 1, expected 0 \(weights has no"),
        (lambda: mha.viz.heatmap(w, tokens=["a", "b"]), r"tokens: got 2 tokens, expected 3"),
        (lambda: mha.viz.heatmap(w, tokens="abc"), r"tokens: got str, expected a list of str"),
        (lambda: mha.viz.heatmap(w, tokens=["a", 1, "c"]), r"got a int token \(1\)"),
        (lambda: mha.viz.heatmap(w, tokens=(["a", "b", "c"], ["x"])),
         r"tokens\[1\] \(keys\): got 1 tokens, expected 4"),
        (lambda: mha.viz.heatmap(w, head=2), r"^mha_viz_term: opts\.head: got 2"),
        (lambda: mha.viz.heatmap(w, head="first"), r"head: got 'first', expected None"),
        (lambda: mha.viz.heatmap(w, head=2**64 + 1), r"head: got 18446744073709551617, "
                                                      r"expected 0 \.\. 1"),
        (lambda: mha.viz.heatmap(np.array([["a"]])), r"weights\.dtype: got <U1"),
        (lambda: mha.viz.show(np.zeros((2, 0, 3), np.float32)), r"^mha_viz_html: "),
    ]
    for call, msg in cases:
        with pytest.raises(ValueError, match=msg):
            call()
    assert capsys.readouterr().out == ""

    # a failed save leaves the previous file as it was, and no temporary
    for ext in (".svg", ".png", ".html"):
        p = tmp_path / f"old{ext}"
        p.write_bytes(b"old")
        with pytest.raises(ValueError, match=r"non-finite|finite"):
            mha.viz.save(np.full((3, 3), np.nan, np.float32), p)
        assert p.read_bytes() == b"old"
    with pytest.raises(OSError):
        mha.viz.save(w, tmp_path / "missing" / "w.svg")
    assert leftovers(tmp_path) == []


def test_import_viz_does_not_import_torch(tmp_path):
    code = ("import sys, numpy as np, mha.viz\n"
            "mha.viz.save(np.eye(3, dtype=np.float32), sys.argv[1])\n"
            "mha.viz.show(np.eye(3, dtype=np.float32))._repr_html_()\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "import mha; assert mha.viz is sys.modules['mha.viz']\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "eye.svg")],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=PYTHON_DIR),
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(svg_cells(tmp_path / "eye.svg")[0]) == 9
