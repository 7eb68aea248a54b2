"""test_html_large.py TEST_VIZ OUTDIR - the HTML page of a large view: writes a 2000 x 2000,
two-head page with `TEST_VIZ --write-html-large 2000 2 OUTDIR/large.html`, opens it in headless
Chromium through playwright and checks: the file stays small (mha_viz.h bounds it), the page is
drawn within LOAD_BOUND_S (it used to hold a rect and a listener per weight: 43 MB that never
finished loading), it says it is downsampled (8 x 8 blocks: 250 x 250 cells), and hovering a
cell tells that block's queries, keys and mean, for a head and for the average, as numpy computes
them here from the same formula (test_viz.c's write_large). No console error, no request.

Chromium is Debian's (/usr/bin/chromium, or $MHA_CHROMIUM), as in test_html.py, whose launch
settings and failure rules this script shares. Registered as the CTest viz_browser_large in
tests/viz.cmake."""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_html  # noqa: E402  (launch settings; its checks run only as a script)
from test_html import check, die  # noqa: E402

N, H, F = 2000, 2, 8  # the view, and the block the page must choose (ceil(2000 / 256))
LOAD_BOUND_S = 30  # generous: a loaded 2-core machine; the page draws in about a second
# mha_viz.h: at most 2^20 values of at most 12 bytes, plus labels and about 20 KB
SIZE_BOUND = 12 * 2 ** 20 + 64 * 1024


def weights():
    """w[h, i, j] as test_viz.c's write_large computes it, rounded to float32."""
    h, i, j = np.meshgrid(np.arange(H), np.arange(N), np.arange(N), indexing='ij')
    w = ((7 * i + 13 * j + 5 * h) % 101).astype(np.float64) / 100.0 * (1.0 + j / N)
    return w.astype(np.float32)


def block(w, a, b):
    """Rows, columns and mean (in float64) of block (a, b) of w [N, N]."""
    r0, c0 = a * F, b * F
    r1, c1 = min(N, r0 + F), min(N, c0 + F)
    return (r0, r1 - 1), (c0, c1 - 1), float(w[r0:r1, c0:c1].astype(np.float64).mean())


def tooltip_value(text):
    return float(text.rsplit('mean ', 1)[1])


def run_checks(page, url, path):
    errors, requests = [], []
    page.on('console', lambda m: errors.append(m.text) if m.type == 'error' else None)
    page.on('pageerror', lambda e: errors.append(str(e)))
    page.on('request', lambda r: requests.append(r.url))

    size = os.path.getsize(path)
    check(size <= SIZE_BOUND, 'the page is %d bytes (bound %d)' % (size, SIZE_BOUND))

    t0 = time.monotonic()
    page.goto(url, wait_until='load', timeout=LOAD_BOUND_S * 1000)
    page.wait_for_selector('#heat .cell', timeout=LOAD_BOUND_S * 1000)
    took = time.monotonic() - t0
    check(took <= LOAD_BOUND_S, 'loaded and drawn in %.1f s (bound %d s)' % (took, LOAD_BOUND_S))

    R = C = -(-N // F)
    cells = page.locator('#heat .cell').count()
    check(cells == R * C, 'the heatmap has %d x %d block cells: %d' % (R, C, cells))
    note = page.locator('#downsample').text_content() or ''
    want = 'each cell is the mean of a %dx%d block (%d x %d weights as %d x %d cells)' % (
        F, F, N, N, R, C)
    check(want in note, 'the page says it is downsampled: ' + note)
    check(page.locator('#lines').is_hidden(), 'no token lines for 4M pairs')

    w = weights()

    def hover(a, b):
        page.hover('#heat .cell[data-i="%d"][data-j="%d"]' % (a, b))
        return page.locator('#info').text_content() or ''

    for a, b in ((17, 203), (249, 0)):
        (q0, q1), (k0, k1), mean = block(w[0], a, b)
        text = hover(a, b)
        head = 'queries %d\u2013%d \u2192 keys %d\u2013%d (%d \u00d7 %d weights): mean ' % (
            q0, q1, k0, k1, q1 - q0 + 1, k1 - k0 + 1)
        ok = text.startswith(head) and abs(tooltip_value(text) - mean) <= 1e-3 * abs(mean)
        check(ok, 'head 0, block (%d, %d): %r, numpy: mean %.6g' % (a, b, text, mean))

    page.click('#btn-avg')
    (q0, q1), (k0, k1), mean = block(w.astype(np.float64).mean(axis=0), 100, 37)
    text = hover(100, 37)
    ok = text.startswith('queries %d\u2013%d \u2192 keys %d\u2013%d' % (q0, q1, k0, k1)) \
        and abs(tooltip_value(text) - mean) <= 1e-3 * abs(mean)
    check(ok, 'the average, block (100, 37): %r, numpy: mean %.6g' % (text, mean))

    check(not errors, 'no console errors' + (': ' + ' | '.join(errors) if errors else ''))
    foreign = [r for r in requests if r != url]
    check(not foreign, 'no request but the page itself' + (': ' + ' '.join(foreign)
                                                              if foreign else ''))


def main():
    if len(sys.argv) != 3:
        die('usage: %s TEST_VIZ OUTDIR' % sys.argv[0])
    test_viz, outdir = sys.argv[1], sys.argv[2]
    browser = test_html.require_browser()

    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, 'large.html')
    try:
        rc = subprocess.run([test_viz, '--write-html-large', str(N), str(H), path]).returncode
    except OSError as e:
        die('cannot run %s: %s' % (test_viz, e.strerror))
    if rc != 0:
        die('%s --write-html-large exited with %d' % (test_viz, rc))
    url = Path(path).resolve().as_uri()

    return test_html.browser_session(
        'viz_browser_large', __file__, browser,
        lambda ctx: run_checks(test_html.first_page(ctx), url, path))


if __name__ == '__main__':
    sys.exit(main())
