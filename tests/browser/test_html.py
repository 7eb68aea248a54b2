"""test_html.py TEST_VIZ OUTDIR - writes the sample page with `TEST_VIZ --write-html
OUTDIR/sample.html`, opens it in headless Chromium through Python's playwright and checks: no
console error or page error, no request but the file:// page itself, hovering a query token
highlights exactly its heatmap row (and a key token its column), selecting another head changes
the cells' colours, hovering a cell tells its weight, and the screenshot (OUTDIR/page.png) is not
blank.

Chromium is Debian's (/usr/bin/chromium, or $MHA_CHROMIUM); playwright never downloads one here.
A missing chromium or playwright is a failure (exit 1), never a skip. Prints one `ok   ` or
`FAIL ` line per check and a summary; exits 0 when every check passed. Registered as the CTest
viz_browser in tests/viz.cmake."""
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import traceback
import zlib
from pathlib import Path

# Generous on purpose: the suite runs on loaded 2-core machines, and a page on file:// has no
# network to wait for, so a slow step means a slow machine, not a hung one.
LAUNCH_TIMEOUT_MS = 120_000
STEP_TIMEOUT_MS = 60_000

CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update',
                 '--disable-sync']

failures = 0


def check(cond, what):
    global failures
    print(('ok   ' if cond else 'FAIL ') + what, flush=True)
    if not cond:
        failures += 1


def die(msg):
    print('viz_browser: error: ' + msg, file=sys.stderr, flush=True)
    sys.exit(1)


def decode_png(buf):
    """Decodes an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes) into (w, h, ch, px),
    px a bytearray of h rows of w*ch bytes. Undoes the five per-row filters of the PNG spec."""
    if buf[:8] != b'\x89PNG\r\n\x1a\n':
        raise ValueError('not a png')
    off, w, h, ch = 8, 0, 0, 0
    idat = []
    while off + 8 <= len(buf):
        length, ctype = struct.unpack('>I4s', buf[off:off + 8])
        data = buf[off + 8:off + 8 + length]
        if ctype == b'IHDR':
            w, h, depth, colour, _, _, interlace = struct.unpack('>IIBBBBB', data)
            if depth != 8 or interlace != 0:
                raise ValueError('unsupported png: depth %d, interlace %d' % (depth, interlace))
            ch = {6: 4, 2: 3}.get(colour, 0)
            if not ch:
                raise ValueError('unsupported colour type %d' % colour)
        elif ctype == b'IDAT':
            idat.append(data)
        elif ctype == b'IEND':
            break
        off += 12 + length
    raw = zlib.decompress(b''.join(idat))
    stride = w * ch
    if len(raw) != h * (stride + 1):
        raise ValueError('png data is %d bytes, expected %d' % (len(raw), h * (stride + 1)))
    px = bytearray(h * stride)
    prev = bytearray(stride)  # the row above; zeros above the first row
    for y in range(h):
        f = raw[y * (stride + 1)]
        row = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:  # Sub: + left
            for x in range(ch, stride):
                row[x] = (row[x] + row[x - ch]) & 255
        elif f == 2:  # Up: + above
            row = bytearray((r + b) & 255 for r, b in zip(row, prev))
        elif f == 3:  # Average: + floor((left + above) / 2)
            for x in range(stride):
                a = row[x - ch] if x >= ch else 0
                row[x] = (row[x] + ((a + prev[x]) >> 1)) & 255
        elif f == 4:  # Paeth: + whichever of left, above, upper-left is nearest to l + a - ul
            for x in range(stride):
                if x >= ch:
                    a, c = row[x - ch], prev[x - ch]
                else:
                    a = c = 0
                b = prev[x]
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                p = a if pa <= pb and pa <= pc else b if pb <= pc else c
                row[x] = (row[x] + p) & 255
        elif f != 0:
            raise ValueError('bad filter type %d in row %d' % (f, y))
        px[y * stride:(y + 1) * stride] = row
        prev = row
    return w, h, ch, px


def run_checks(page, url, outdir):
    errors, requests = [], []
    page.on('console', lambda m: errors.append(m.text) if m.type == 'error' else None)
    page.on('pageerror', lambda e: errors.append(str(e)))
    page.on('request', lambda r: requests.append(r.url))
    page.goto(url, wait_until='load')
    page.wait_for_selector('#heat .cell')

    L, S, H = 6, 6, 2
    check(page.locator('#heat .cell').count() == L * S, 'heatmap has L*S cells')
    check(page.locator('#heads button').count() == H + 1, 'a button per head + average')
    check(page.locator('.thumb canvas').count() == H + 1, 'a small heatmap per head')
    check(page.locator('#stats tbody tr').count() == H + 1, 'a statistics row per head')
    check(page.locator('#q-4 text').text_content() == '</script>',
          'a "</script>" token is shown as text')

    def hl():
        return page.evaluate('''() => Array.from(document.querySelectorAll('#heat .cell.hl'))
            .map((c) => c.getAttribute('data-i') + ',' + c.getAttribute('data-j')).join(' ')''')

    check(hl() == '', 'nothing highlighted before hovering')
    page.hover('#q-2')
    row = hl()
    check(row == '2,0 2,1 2,2 2,3 2,4 2,5', 'hovering query token 2 highlights row 2: ' + row)
    visible = page.locator('.pair:not(.off)').count()
    check(visible == S, "only the hovered token's %d lines stay: %d" % (S, visible))
    page.screenshot(path=os.path.join(outdir, 'hover.png'), full_page=True)
    page.hover('#k-3')
    col = hl()
    check(col == '0,3 1,3 2,3 3,3 4,3 5,3', 'hovering key token 3 highlights column 3: ' + col)
    page.mouse.move(5, 5)
    check(hl() == '', 'leaving the token clears the highlight')

    def fills():
        return page.evaluate('''() => Array.from(document.querySelectorAll('#heat .cell'))
            .map((c) => c.getAttribute('fill')).join(';')''')

    f0 = fills()
    page.click('#btn-1')
    f1 = fills()
    check(f0 != f1, 'selecting head 1 changes the heatmap')
    check(page.locator('#heat-title').text_content() == 'head 1', 'the title follows the head')
    page.click('#btn-avg')
    check((page.locator('#heat-title').text_content() or '').startswith('average'), 'average view')
    page.click('#btn-0')

    # a small view draws every weight: a cell's tooltip is its exact weight (as stored)
    check(page.locator('#downsample').count() == 0, 'a small view is not downsampled')
    page.hover('#heat .cell[data-i="2"][data-j="1"]')
    info = page.locator('#info').text_content()
    want = page.evaluate("() => JSON.parse(document.getElementById('mha-data').textContent)"
                         ".w[0][2 * 6 + 1].toFixed(4)")
    check(info == 'query 2 \u201csat\u201d \u2192 key 1 \u201ccat\u201d: ' + want,
          'hovering cell (2, 1) tells its weight: %r' % info)
    # the tooltips' number format, the page's own function: 4 decimals, or 4 significant digits
    # below 1e-4 (a long sequence's weights would all read 0.0000)
    fmt = re.search(r'function fmt\(x\) \{.*?\n.*?\}', page.content())
    got = page.evaluate('() => { %s; return [fmt(3.217e-6), fmt(0), fmt(0.25)]; }' % fmt.group(0)
                        ) if fmt else None
    check(got == ['0.000003217', '0.0000', '0.2500'],
          'small weights read in significant digits: %r' % (got,))

    png = page.screenshot(path=os.path.join(outdir, 'page.png'), full_page=True)
    w, h, ch, px = decode_png(png)
    colours = set()
    for i in range(0, w * h, 7):
        o = i * ch
        colours.add((px[o] << 16) | (px[o + 1] << 8) | px[o + 2])
    check(w >= 600 and h >= 400, 'screenshot %dx%d' % (w, h))
    check(len(colours) >= 20, 'screenshot is not blank: %d colours sampled' % len(colours))

    check(not errors, 'no console errors' + (': ' + ' | '.join(errors) if errors else ''))
    foreign = [r for r in requests if r != url]
    check(not foreign and url in requests,
          'no request but the page itself' + (': ' + ' '.join(foreign) if foreign else ''))


def require_browser():
    """Debian's Chromium and playwright's sync_playwright, for every browser test: missing
    dependencies fail here, before any work, with what to install."""
    chromium = os.environ.get('MHA_CHROMIUM') or '/usr/bin/chromium'
    if not (os.path.isfile(chromium) and os.access(chromium, os.X_OK)):
        die('no Chromium at %s: `make test` installs it, or `apt-get install chromium` '
            '(or set MHA_CHROMIUM to a Chromium binary)' % chromium)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        die('cannot import playwright in %s (%s): `make test` sets up the test venv with it, '
            'or `pip install playwright` into that venv (never `playwright install`: the '
            'browser is Debian\'s chromium)' % (sys.executable, e))
    return chromium, sync_playwright


def browser_session(name, script, browser, body):
    """Runs body(ctx) in a headless Chromium context of its own (a fresh profile, the timeouts
    above), browser from require_browser. A timeout or a dead browser fails the test with
    which line of script it was at; else the test fails if a check did. Returns the exit
    status."""
    chromium, sync_playwright = browser
    user_dir = tempfile.mkdtemp(prefix='mha-%s-chromium-' % name)
    try:
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                user_dir, executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
                viewport={'width': 1200, 'height': 900}, timeout=LAUNCH_TIMEOUT_MS)
            try:
                ctx.set_default_timeout(STEP_TIMEOUT_MS)
                ctx.set_default_navigation_timeout(STEP_TIMEOUT_MS)
                body(ctx)
            finally:
                ctx.close()
    except Exception as e:  # a timeout or a dead browser: say at which step of the script
        ours = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == script]
        step = ' at line %d (%s)' % (ours[-1].lineno, ours[-1].line) if ours else ''
        print('%s: error: the browser session failed%s: %s: %s'
              % (name, step, type(e).__name__, e), file=sys.stderr, flush=True)
        return 1
    finally:
        shutil.rmtree(user_dir, ignore_errors=True)
    print('%d check(s) failed' % failures if failures else 'all browser checks passed')
    return 1 if failures else 0


def first_page(ctx):
    """The context's page (a persistent context opens with one), or a new one."""
    return ctx.pages[0] if ctx.pages else ctx.new_page()


def main():
    if len(sys.argv) != 3:
        die('usage: %s TEST_VIZ OUTDIR' % sys.argv[0])
    test_viz, outdir = sys.argv[1], sys.argv[2]

    browser = require_browser()

    os.makedirs(outdir, exist_ok=True)
    page_path = os.path.join(outdir, 'sample.html')
    try:
        rc = subprocess.run([test_viz, '--write-html', page_path]).returncode
    except OSError as e:
        die('cannot run %s: %s' % (test_viz, e.strerror))
    if rc != 0:
        die('%s --write-html %s exited with %d' % (test_viz, page_path, rc))
    url = Path(page_path).resolve().as_uri()

    return browser_session('viz_browser', __file__, browser,
                           lambda ctx: run_checks(first_page(ctx), url, outdir))


if __name__ == '__main__':
    sys.exit(main())
