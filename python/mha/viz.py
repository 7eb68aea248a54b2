"""mha.viz - pictures of attention weights: in the terminal, as SVG, PNG or an interactive HTML
page, and inline in Jupyter.

    import mha.viz
    mha.viz.heatmap(weights, tokens=["the", "cat", "sat"])     # prints it
    mha.viz.save(weights, "attention.svg")                      # .svg, .png, .html
    mha.viz.show(weights, tokens)                               # in a notebook: the page

weights are attention probabilities, a NumPy array or a torch tensor: [L, S] (one head),
[H, L, S], or [B, H, L, S] (pick the batch element with ``batch=``), e.g. what
``mha.MultiheadAttention(..., need_weights=True, average_attn_weights=False)`` returns.
The library's renderers draw them (mha_viz.h); importing this module does not import torch.
"""
import ctypes
import html as _html
import os
import shutil
import sys

import numpy as np

from . import _lib
from ._lib import ArgumentError

_HEAD, _AVERAGE, _ALL = 0, 1, 2  # mha_viz_view
_TERM_UNICODE, _TERM_COLOR = 0, 2  # mha_viz_term_mode
_FILE_WRITERS = {".svg": "mha_viz_svg_file", ".png": "mha_viz_png_file",
                 ".html": "mha_viz_html_file", ".htm": "mha_viz_html_file"}


class _Picture:
    """Weights [H, L, S] as contiguous float32 and the mha_viz_opts to draw them with (the
    token arrays the options point to are kept here)."""

    def __init__(self, fn, weights, tokens, head, batch):
        self.fn = fn
        self.w = _weights(fn, weights, batch)
        self.H, self.L, self.S = self.w.shape
        self.opts = _lib.lib.mha_viz_opts_default()
        self.opts.view, self.opts.head = _view(fn, head, self.H)
        self._tokens = _tokens(fn, tokens, self.L, self.S)
        self.opts.query_tokens, self.opts.key_tokens = (
            ctypes.cast(t, ctypes.c_void_p) if t is not None else None for t in self._tokens)
        # a pair (query_tokens, None): the keys are unlabelled (positions), not the queries'
        self.opts.key_positions = int(_is_pair(tokens))

    def _args(self):
        return (_lib.ctx(), self.w.ctypes.data, self.H, self.L, self.S, ctypes.byref(self.opts))

    def render(self, name):
        """The bytes the renderer name (mha_viz_term, mha_viz_html) writes."""
        out = bytearray()

        def write(user, data, size):
            try:
                out.extend(ctypes.string_at(data, size))
                return 0
            except Exception:  # out of memory: the library reports MHA_ERR_IO
                return 1

        args = self._args()
        _lib.check(getattr(_lib.lib, name)(*args, _lib.WRITE_FN(write), None), args[0])
        return bytes(out)

    def save(self, path):
        path = os.fsdecode(os.fspath(path))  # str or bytes (as open() takes)
        writer = _FILE_WRITERS.get(os.path.splitext(path)[1].lower())
        if writer is None:
            raise ArgumentError(f"{self.fn}: path: got {path!r}, expected a name ending in "
                             f"{', '.join(_FILE_WRITERS)} (the format)")
        args = self._args()
        _lib.check(getattr(_lib.lib, writer)(*args, os.fsencode(path)), args[0])


def _weights(fn, weights, batch):
    if type(weights).__module__.startswith("torch") and hasattr(weights, "detach"):
        weights = weights.detach().cpu().float().numpy()
    w = np.asarray(weights)
    if w.dtype.kind not in "biuf":
        raise ArgumentError(f"{fn}: weights.dtype: got {w.dtype}, expected numbers")
    if w.ndim not in (2, 3, 4):
        raise ArgumentError(f"{fn}: weights.ndim: got {w.ndim}, expected 2 ([L, S]), 3 "
                         "([H, L, S]) or 4 ([B, H, L, S])")
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)):
        raise ArgumentError(f"{fn}: batch: got {batch!r}, expected an int")
    if w.ndim == 4:
        if not 0 <= batch < w.shape[0]:
            raise ArgumentError(f"{fn}: batch: got {batch}, expected 0 <= batch < {w.shape[0]} "
                             "(weights.shape[0])")
        w = w[batch]
    elif batch != 0:
        raise ArgumentError(f"{fn}: batch: got {batch}, expected 0 (weights has no batch "
                         f"dimension: shape {w.shape})")
    return np.ascontiguousarray(w.reshape((1,) * (3 - w.ndim) + w.shape), np.float32)


def _view(fn, head, H):
    """(mha_viz_view, head) for head: None (every head, or the only one), an int, "average"."""
    if head is None:
        return (_ALL if H > 1 else _HEAD), 0
    if head == "average":
        return _AVERAGE, 0
    if isinstance(head, bool) or not isinstance(head, (int, np.integer)):
        raise ArgumentError(f"{fn}: head: got {head!r}, expected None (every head), an int or "
                         "\"average\"")
    if not -2**63 <= int(head) < 2**63:  # ctypes would wrap it to another head
        raise ArgumentError(f"{fn}: head: got {int(head)}, expected 0 .. {H - 1} (one of the "
                         f"{H} heads)")
    return _HEAD, int(head)  # the library checks the range


def _token_array(fn, what, toks, n):
    if isinstance(toks, str) or not hasattr(toks, "__len__"):
        raise ArgumentError(f"{fn}: {what}: got {type(toks).__name__}, expected a list of str")
    if len(toks) != n:
        raise ArgumentError(f"{fn}: {what}: got {len(toks)} tokens, expected {n}")
    for t in toks:
        if not isinstance(t, str):
            raise ArgumentError(f"{fn}: {what}: got a {type(t).__name__} token ({t!r}), expected "
                             "str")
    # a NUL would end the C string there: drawn as "?", as the library draws every other
    # control character
    return (ctypes.c_char_p * n)(*(t.replace("\0", "?").encode("utf-8", "replace")
                                   for t in toks))


def _is_pair(tokens):
    """Whether tokens is a pair (query_tokens, key_tokens), not one list of labels."""
    return (isinstance(tokens, (list, tuple)) and len(tokens) == 2 and
            not any(isinstance(t, str) for t in tokens))


def _tokens(fn, tokens, L, S):
    """(query, key) C string arrays or None; a single list names the queries (and the keys
    too when L == S: self-attention), a pair (query_tokens, key_tokens) each side."""
    if tokens is None:
        return None, None
    if not _is_pair(tokens):
        return _token_array(fn, "tokens", tokens, L), None
    q, k = tokens
    return (None if q is None else _token_array(fn, "tokens[0] (queries)", q, L),
            None if k is None else _token_array(fn, "tokens[1] (keys)", k, S))


def heatmap(weights, tokens=None, head=None, *, batch=0):
    """Prints the attention weights as a heatmap for the terminal.

    In colour (24-bit ANSI) when standard output is a terminal and NO_COLOR is not set,
    else in Unicode shades (" ░▒▓█"), as wide as the terminal (at least 40 columns; long
    sequences are averaged in blocks, and the output says so).

    Parameters
    ----------
    weights : NumPy array or torch tensor, [L, S], [H, L, S] or [B, H, L, S]
    tokens : list of str [L], or a pair (query_tokens [L], key_tokens [S]), optional
        A single list labels the queries, and the keys too in self-attention (L == S).
    head : None, int or "average"
        None: every head side by side (or the only one); an int: that head; "average": the
        mean over heads.
    batch : int
        The batch element of a 4-D weights.

    Returns None. Raises ValueError for bad shapes, tokens or non-finite weights.

    Example
    -------
    >>> import numpy as np, mha.viz
    >>> w = np.array([[1.0, 0.0], [0.3, 0.7]], np.float32)
    >>> mha.viz.heatmap(w, tokens=["hello", "world"])
    """
    p = _Picture("heatmap", weights, tokens, head, batch)
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    p.opts.term_mode = _TERM_COLOR if colour else _TERM_UNICODE
    p.opts.width = min(max(shutil.get_terminal_size((80, 24)).columns, 40), 100000)
    sys.stdout.write(p.render("mha_viz_term").decode("utf-8"))
    sys.stdout.flush()


def save(weights, path, tokens=None, *, head=None, batch=0):
    """Writes a picture of the attention weights; the format is chosen by the extension:
    ".svg" (vector, a tooltip per cell), ".png" (with labels), ".html" or ".htm" (the
    interactive page of ``show``). Any other extension: ValueError.

    The file is replaced only once it is completely written (an error leaves an existing
    file unchanged and no temporary file). Parameters as for ``heatmap``; head is ignored by
    HTML, which shows every head.

    Example
    -------
    >>> mha.viz.save(weights, "attention.png", tokens=["the", "cat", "sat"])
    """
    _Picture("save", weights, tokens, head, batch).save(path)


class Page:
    """The interactive HTML page of some attention weights (what ``show`` returns).

    In Jupyter it displays itself (``_repr_html_``: the page in an iframe, its script
    running). ``html`` is the page (str, self-contained: no network access); ``save(path)``
    writes it.
    """

    def __init__(self, picture):
        self._picture = picture
        self.html = picture.render("mha_viz_html").decode("utf-8")

    def save(self, path):
        """Writes the page to path (all or nothing; any extension)."""
        p = os.fspath(path)
        args = self._picture._args()
        _lib.check(_lib.lib.mha_viz_html_file(*args, os.fsencode(p)), args[0])

    def height(self):
        """Pixels the notebook's iframe gets: about the page's height when it is small (the
        token view, the heatmap and one statistics row per head, stacked), at most 1200 (the
        page scrolls inside)."""
        H, L, S = self._picture.H, self._picture.L, self._picture.S
        lines = max(L, S) * 22 + 8 if L * S <= 20000 else 0  # the page's own limits
        cell = max(3, min(32, 440 // max(L, S)))
        heat = L * cell + (40 if cell >= 10 else 0)
        return min(470 + lines + heat + 28 * (H + 1), 1200)

    def _repr_html_(self):
        return (f'<iframe srcdoc="{_html.escape(self.html, quote=True)}" '
                f'style="width: 100%; height: {self.height()}px; border: 0" '
                'sandbox="allow-scripts"></iframe>')

    def __repr__(self):
        p = self._picture
        return f"<mha.viz.Page: {p.H} heads, {p.L} queries x {p.S} keys>"


def show(weights, tokens=None, *, batch=0):
    """The interactive page of the attention weights, for Jupyter: a head selector, token
    lines whose opacity is the weight, a heatmap per head, per-head statistics. Beyond 256
    tokens a side the heatmap shows means of blocks (and says so; hovering a cell gives the
    block's ranges and mean), so that the page stays small (include/mha_viz.h has the bound).

    Parameters as for ``heatmap``. Returns a ``Page``: a notebook cell that ends with it
    shows the page inline; ``.html`` is the page's text, ``.save(path)`` writes it.

    Example
    -------
    >>> page = mha.viz.show(weights, tokens=["the", "cat", "sat"])
    >>> page                      # in Jupyter: the interactive page
    """
    return Page(_Picture("show", weights, tokens, None, batch))
