"""viz_svg_check.py FILE N - FILE parses as XML, is an <svg> and has N <rect class="cell">,
each with a #rrggbb fill and a <title> tooltip. Used by tests/viz.cmake."""
import re
import sys
import xml.etree.ElementTree as ET

NS = "{http://www.w3.org/2000/svg}"
path, want = sys.argv[1], int(sys.argv[2])
root = ET.parse(path).getroot()
assert root.tag == NS + "svg", "root element is %r, expected svg" % root.tag
cells = [r for r in root.iter(NS + "rect") if r.get("class") == "cell"]
assert len(cells) == want, "%d cells, expected %d" % (len(cells), want)
for c in cells:
    assert re.fullmatch(r"#[0-9a-f]{6}", c.get("fill", "")), "bad fill %r" % c.get("fill")
    t = c.find(NS + "title")
    assert t is not None and "query" in t.text and "key" in t.text, "cell without a tooltip"
assert int(root.get("width")) > 0 and int(root.get("height")) > 0
print("ok: %s parses, %d cells" % (path, len(cells)))
