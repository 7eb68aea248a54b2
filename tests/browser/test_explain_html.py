"""test_explain_html.py MHA_BIN OUTDIR - `mha explain --html` in a browser.

Writes two pages with the mha binary: the built-in example's whole walkthrough with a causal
mask and the backward (OUTDIR/steps.html), and the FlashAttention-2 tiles (OUTDIR/tiles.html).
Opens each in headless Chromium through Python's playwright and checks: every step is a
<section> with its id, title, shape, formula and "why" and its matrices as coloured tables
(masked scores shown as -inf), the check section carries the final line, nothing is loaded but
the page itself (no request, and no src, href, <link>, <script> or url() in the file: one
self-contained page), no console error, and the screenshot is not blank.

Chromium and playwright as in test_html.py (the HTML viz page's browser test), whose helpers
this reuses: a missing one is a failure, never a skip. Prints one `ok   ` or `FAIL ` line per
check; exits 0 when every check passed. Registered as the CTest explain_browser in
tests/explain.cmake."""
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_html as th  # noqa: E402  (check, die, decode_png, Chromium's settings)

FORWARD_STEPS, LAST_STEP = 10, 18
FINAL = re.compile(r'^explain: matches the fused kernel, max \|diff\| = \S+')


def static_checks(html, name):
    """The file alone: one page that loads nothing."""
    th.check(html.startswith('<!DOCTYPE html>') and html.rstrip().endswith('</html>'),
             name + ': a whole HTML document')
    for pattern, what in [(r'<script', 'no script'), (r'<link', 'no <link>'),
                          (r'\ssrc\s*=', 'no src attribute'), (r'\shref\s*=', 'no href attribute'),
                          (r'url\(', 'no url() in the CSS'), (r'@import', 'no @import')]:
        th.check(not re.search(pattern, html, re.I), name + ': ' + what)


def open_page(page, path):
    errors, requests = [], []
    page.on('console', lambda m: errors.append(m.text) if m.type == 'error' else None)
    page.on('pageerror', lambda e: errors.append(str(e)))
    page.on('request', lambda r: requests.append(r.url))
    url = Path(path).resolve().as_uri()
    page.goto(url, wait_until='load')
    return url, errors, requests


def finish_page(page, name, url, errors, requests, outdir):
    png = page.screenshot(path=os.path.join(outdir, name + '.png'), full_page=True)
    w, h, ch, px = th.decode_png(png)
    colours = set()
    for i in range(0, w * h, 7):
        o = i * ch
        colours.add((px[o] << 16) | (px[o + 1] << 8) | px[o + 2])
    th.check(len(colours) >= 20, name + ': screenshot is not blank: %d colours' % len(colours))
    th.check(not errors, name + ': no console errors' + (': ' + ' | '.join(errors) if errors
                                                         else ''))
    foreign = [r for r in requests if r != url]
    th.check(not foreign and url in requests, name + ': no request but the page itself' +
             (': ' + ' '.join(foreign) if foreign else ''))


def cell_colours(page, selector):
    return page.evaluate('''(sel) => Array.from(document.querySelectorAll(sel))
        .map((c) => getComputedStyle(c).backgroundColor)''', selector)


def check_steps(page):
    for n in range(1, LAST_STEP + 1):
        sec = '#step-%d' % n
        th.check(page.locator(sec).count() == 1, 'section %s exists' % sec)
        title = page.locator(sec + ' h2').text_content() or ''
        th.check(title.startswith('%d. ' % n), '%s has its numbered title: %r' % (sec, title))
        for part in ('p.shape', 'pre.formula', 'p.why'):
            th.check(page.locator(sec + ' ' + part).count() >= 1, '%s has its %s' % (sec, part))
        th.check(page.locator(sec + ' table.m').count() >= 1, '%s shows its numbers' % sec)
    ids = page.evaluate("() => Array.from(document.querySelectorAll('section')).map(s => s.id)")
    want = ['step-%d' % n for n in range(1, LAST_STEP + 1)] + ['check']
    th.check(ids == want, 'sections in order: %s' % ids)

    # the softmax of head 0: a 6 x 6 table of weights, coloured by value, rows summing to 1
    p0 = page.locator('#step-7 table.m').first
    cells = p0.locator('td')
    th.check(cells.count() == 36, 'P (head 0) has 6 x 6 cells: %d' % cells.count())
    vals = [float(t) for t in cells.all_text_contents()]
    rows = [sum(vals[i * 6:(i + 1) * 6]) for i in range(6)]
    th.check(all(abs(s - 1) < 1e-3 for s in rows), 'each row of P sums to 1: %s' % rows)
    th.check(all(vals[i * 6 + j] == 0 for i in range(6) for j in range(i + 1, 6)),
             'causal: P is 0 above the diagonal')
    colours = cell_colours(page, '#step-7 table.m:first-of-type td')
    th.check(len(set(colours)) >= 6,
             'P cells are coloured by value: %d colours' % len(set(colours)))
    masked = page.locator('#step-6 td.ninf')
    th.check(masked.count() == 2 * 15, 'the mask step shows -inf above the diagonal: %d cells'
             % masked.count())
    th.check(set(masked.all_text_contents()) == {'-inf'}, 'masked cells read -inf')

    lines = [t.strip() for t in page.locator('#check p.check').all_text_contents()]
    th.check(any('gradients match the fused backward' in t for t in lines),
             'the check section has the backward line: %s' % lines)
    th.check(bool(lines) and FINAL.match(lines[-1]) is not None,
             'the check section ends with the final line: %s' % lines[-1:])


def check_tiles(page):
    th.check(page.locator('#tiles').count() == 1, 'section #tiles exists')
    th.check(page.locator('#tiles pre.formula').count() == 1, '#tiles has its formula')
    tables = page.locator('#tiles table.m')
    captions = tables.locator('caption').all_text_contents()
    visits = [c for c in captions if c.startswith('tile keys')]
    th.check(len(visits) == 9, 'three query blocks x three key tiles: %d tile tables' % len(visits))
    done = [c for c in captions if 'done: O = acc / l' in c]
    th.check(len(done) == 3, 'each block ends with O = acc / l: %d' % len(done))
    heads = page.locator('#tiles table.m th').all_text_contents()
    th.check({'m_old', 'm_new', 'rescale', 'l'} <= set(heads),
             'the running max, its rescale and the running sum are shown')
    lines = ' '.join(page.locator('#check p.check').all_text_contents())
    th.check('the tiles match the fused attention core' in lines, 'the tiles are checked')


def main():
    if len(sys.argv) != 3:
        th.die('usage: %s MHA_BIN OUTDIR' % sys.argv[0])
    mha, outdir = sys.argv[1], sys.argv[2]
    browser = th.require_browser()

    os.makedirs(outdir, exist_ok=True)
    pages = {'steps': ['--causal', '--backward'], 'tiles': ['--tiles']}
    for name, args in pages.items():
        path = os.path.join(outdir, name + '.html')
        p = subprocess.run([mha, 'explain', *args, '--html', path], capture_output=True,
                           text=True)
        if p.returncode != 0:
            th.die('mha explain %s --html exited with %d: %s' % (' '.join(args), p.returncode,
                                                                   p.stderr.strip()))
        th.check(p.stdout.splitlines()[0] == 'explain: wrote ' + path,
                 name + ': the terminal says where the page is')
        th.check(FINAL.match(p.stdout.splitlines()[-1]) is not None,
                 name + ': the terminal ends with the check line')
        static_checks(Path(path).read_text(encoding='utf-8'), name)

    def pages_checked(ctx):
        for name, check in (('steps', check_steps), ('tiles', check_tiles)):
            page = ctx.new_page()
            url, errors, requests = open_page(page, os.path.join(outdir, name + '.html'))
            check(page)
            finish_page(page, name, url, errors, requests, outdir)
            page.close()

    return th.browser_session('explain_browser', __file__, browser, pages_checked)


if __name__ == '__main__':
    sys.exit(main())
