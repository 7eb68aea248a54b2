"""test_docs_links.py - docs/attention.md points at code and pictures that exist (tests/docs.cmake).

Links into the repository take one of two checkable forms:
  [`function_name`](../src/kernels/generic/attn.c)   the file defines that function (a C
                                                       definition, or a Python def / class)
  [`src/attn/attn_forward.c`](../src/attn/attn_forward.c)   the whole file: the text is its path
Any other link into the repository, a missing file, a function only declared, called or
mentioned there, a missing picture or an in-page anchor that no heading makes is an error.
The pictures must be what docs/make_pictures.sh draws now (run here against this build).
"""
import filecmp
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
PAGE = os.path.join(DOCS, "attention.md")
IMG = os.path.join(DOCS, "img")

LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
IDENT = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")
CODE_SUFFIXES = (".c", ".h", ".py", ".sh")


def _strip_c_comments(text):
    """The text with /* */ and // comments blanked (newlines kept), so that a comment that
    shows a signature is not taken for a definition."""
    def blank(m):
        return re.sub(r"[^\n]", " ", m.group(0))
    return re.sub(r"/\*.*?\*/|//[^\n]*", blank, text, flags=re.S)


def c_defines(text, name):
    """Whether C source text defines the function name: at the start of a line, name(...)
    after its return type (on that line or the one before), the parameter list followed by a
    body '{', not ';' (a declaration), and not inside a statement (a call is indented)."""
    text = _strip_c_comments(text)
    head = re.compile(r"^(?:[A-Za-z_][\w \t*]*?[\s*])?" + re.escape(name) + r"\s*\(", re.M)
    for m in head.finditer(text):
        depth, k = 0, m.end() - 1
        while k < len(text):
            depth += {"(": 1, ")": -1}.get(text[k], 0)
            if depth == 0:
                break
            k += 1
        if text[k + 1:].lstrip().startswith("{"):
            return True
    return False


def py_defines(text, name):
    return re.search(r"^(?:def|class)\s+" + re.escape(name) + r"\b", text, re.M) is not None


def defines(path, name):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return py_defines(text, name) if path.endswith(".py") else c_defines(text, name)


def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to '-'."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def links(markdown):
    """(is_image, text, target) of every inline link outside fenced code blocks."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.extend((m.group(1) == "!", m.group(2), m.group(3)) for m in LINK.finditer(line))
    return out


def check(markdown, base):
    """The problems of the links of markdown (a page in directory base), one string each, and
    the number of code links checked."""
    problems, ncode = [], 0
    anchors = {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", markdown, re.M)}
    for image, text, target in links(markdown):
        where = f"[{text}]({target})"
        if re.match(r"[a-z]+://", target):
            continue
        if target.startswith("#"):
            if target[1:] not in anchors:
                problems.append(f"{where}: no heading makes the anchor {target}")
            continue
        if "#" in target:
            problems.append(f"{where}: a code link names the function, not a line (#...)")
            continue
        path = os.path.normpath(os.path.join(base, target))
        if not os.path.isfile(path):
            problems.append(f"{where}: no such file {os.path.relpath(path, ROOT)}")
            continue
        if image:
            continue
        if not path.endswith(CODE_SUFFIXES):
            continue
        ncode += 1
        name = IDENT.fullmatch(text)
        if name and "." not in name.group(1):
            if not defines(path, name.group(1)):
                problems.append(f"{where}: {os.path.relpath(path, ROOT)} does not define "
                                f"{name.group(1)}")
            continue
        shown = text.strip("`")
        if not (shown and path.replace(os.sep, "/").endswith("/" + shown)):
            problems.append(f"{where}: the text of a code link must be `function_name` or "
                            f"the file's path, got {text!r}")
    return problems, ncode


def read_page():
    with open(PAGE, encoding="utf-8") as f:
        return f.read()


def test_every_code_link_names_a_function_defined_in_its_file():
    problems, ncode = check(read_page(), DOCS)
    assert not problems, "\n".join(problems)
    assert ncode >= 40, f"only {ncode} code links found: is the link syntax still parsed?"


def test_the_checker_refuses_what_is_not_a_definition():
    # declared in the header, defined elsewhere; a kernel declared through a macro; a function
    # only called in a file; a line anchor; a missing file; a link text that names nothing
    bad = "\n".join([
        "[`mha_attn_forward`](../include/mha.h)",
        "[`mha__attn_scores_generic`](../src/kernels/kernels.h)",
        "[`mha__attn_tile_skip`](../src/attn/attn_forward.c)",
        "[`fwd_rows`](../src/attn/attn_forward.c#L10)",
        "[`fwd_rows`](../src/attn/no_such_file.c)",
        "[the forward](../src/attn/attn_forward.c)",
        "[`src/attn/attn_backward.c`](../src/attn/attn_forward.c)",
        "[somewhere](#no-such-heading)",
    ])
    problems, _ = check(bad, DOCS)
    assert len(problems) == 8, "\n".join(problems)
    good = "\n".join([
        "# A heading (with punctuation)",
        "[`mha__attn_tile_skip`](../src/attn/attn_common.h)",
        "[`mha_attn_forward`](../src/attn/attn_forward.c)",
        "[`mha__attn_fwd_generic`](../src/kernels/generic/attn.c)",
        "[`main`](../docs/picture_inputs.py)",
        "[`src/attn/attn_forward.c`](../src/attn/attn_forward.c)",
        "[up](#a-heading-with-punctuation)",
        "```", "[`not_checked_in_code`](../nowhere.c)", "```",
    ])
    problems, ncode = check(good, DOCS)
    assert not problems and ncode == 5, "\n".join(problems)


def test_c_definitions_are_told_from_comments_and_calls():
    src = ("/* int f(int x) { shown in a comment } */\n"
           "int g(void);\n"
           "static inline int\n"
           "h(int a,\n  int b) { return f(a) + g(); }\n"
           "int k(int a) {\n    return h(a,\n      a);\n}\n")
    assert not c_defines(src, "f")  # only in a comment and called
    assert not c_defines(src, "g")  # declared
    assert c_defines(src, "h")  # the return type on the line before (GNU style)
    assert c_defines(src, "k")
    assert c_defines("static void h2(int a,\n               int b)\n{\n}\n", "h2")


def test_pictures_exist_and_every_one_is_shown():
    shown = {os.path.normpath(os.path.join(DOCS, t)) for img, _, t in links(read_page()) if img}
    assert shown, "the page embeds no picture"
    for path in sorted(shown):
        assert os.path.isfile(path), f"missing picture {os.path.relpath(path, ROOT)}"
        root = ET.parse(path).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg", f"{path}: not an SVG"
        assert root.findall(".//{http://www.w3.org/2000/svg}rect"), f"{path}: no cells"
    on_disk = {os.path.join(IMG, f) for f in os.listdir(IMG)}
    assert on_disk == shown, f"pictures not shown: {sorted(on_disk - shown)}"


def test_make_pictures_redraws_the_committed_pictures():
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, MHA=os.environ["MHA_BIN"], MHA_LIB=os.environ["MHA_LIBRARY"],
                   PYTHON=sys.executable)
        r = subprocess.run(["sh", os.path.join(DOCS, "make_pictures.sh"), out], env=env,
                           capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stderr
        made = sorted(os.listdir(out))
        assert made == sorted(os.listdir(IMG)), made
        match, mismatch, errors = filecmp.cmpfiles(out, IMG, made, shallow=False)
        assert not mismatch and not errors, (
            f"{mismatch + errors} differ from what docs/make_pictures.sh draws now: "
            "run it (sh docs/make_pictures.sh) and commit docs/img")


def test_readme_links_the_page():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        targets = [t for _, _, t in links(f.read())]
    assert "docs/attention.md" in targets


def table_problems(markdown):
    """Rows of a Markdown table with another number of cells than its header (GitHub splits
    cells at every '|', even inside `code`)."""
    problems, width = [], None
    for n, line in enumerate(markdown.splitlines(), 1):
        if not line.startswith("|"):
            width = None
            continue
        cells = line.strip().strip("|").split("|")
        if width is None:
            width = len(cells)
        elif len(cells) != width:
            problems.append(f"line {n}: {len(cells)} cells, the header has {width}")
    return problems


def test_tables_have_as_many_cells_as_their_header():
    assert not table_problems(read_page()), "\n".join(table_problems(read_page()))
    assert table_problems("| a | b |\n|---|---|\n| `x | y` | z |\n") == [
        "line 3: 3 cells, the header has 2"]
