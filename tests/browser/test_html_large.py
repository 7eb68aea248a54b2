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
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
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
    chromium = os.environ.get('MHA_CHROMIUM') or '/usr/bin/chromium'
    if not (os.path.isfile(chromium) and os.access(chromium, os.X_OK)):
        die('no Chromium at %s: `apt-get install chromium` (or set MHA_CHROMIUM)' % chromium)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        die('cannot import playwright in %s (%s): `pip install playwright` into the test venv '
            '(never `playwright install`: the browser is Debian\'s chromium)'
            % (sys.executable, e))

    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, 'large.html')
    try:
        rc = subprocess.run([test_viz, '--write-html-large', str(N), str(H), path]).returncode
    except OSError as e:
        die('cannot run %s: %s' % (test_viz, e.strerror))
    if rc != 0:
        die('%s --write-html-large exited with %d' % (test_viz, rc))
    url = Path(path).resolve().as_uri()

    user_dir = tempfile.mkdtemp(prefix='mha-viz-chromium-')
    try:
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                user_dir, executable_path=chromium, headless=True,
                args=test_html.CHROMIUM_ARGS, viewport={'width': 1200, 'height': 900},
                timeout=test_html.LAUNCH_TIMEOUT_MS)
            try:
                ctx.set_default_timeout(test_html.STEP_TIMEOUT_MS)
                page = ctx.pages[0] if ctx.pages else ctx.new_page()
                run_checks(page, url, path)
            finally:
                ctx.close()
    except Exception as e:  # a timeout or a dead browser: say at which step of this script
        ours = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == __file__]
        step = ' at line %d (%s)' % (ours[-1].lineno, ours[-1].line) if ours else ''
        print('viz_browser_large: error: the browser session failed%s: %s: %s'
              % (step, type(e).__name__, e), file=sys.stderr, flush=True)
        return 1
    finally:
        shutil.rmtree(user_dir, ignore_errors=True)

    print('%d check(s) failed' % test_html.failures if test_html.failures
          else 'all browser checks passed')
    return 1 if test_html.failures else 0


if __name__ == '__main__':
    sys.exit(main())
