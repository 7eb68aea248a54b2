// html_test.js PAGE OUTDIR CHROMIUM - opens the page written by mha_viz_html in headless
// Chromium and checks: no console error or page error, no request but the file:// page itself,
// hovering a query token highlights exactly its heatmap row (and a key token its column),
// selecting another head changes the cells' colours, and the screenshot is not blank.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const zlib = require('zlib');
const { chromium } = require('playwright-core');

const [page_path, outdir, exe] = process.argv.slice(2);
const url = 'file://' + path.resolve(page_path);
let failures = 0;
function check(cond, what) {
  console.log((cond ? 'ok   ' : 'FAIL ') + what);
  if (!cond) failures++;
}

// Decodes an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes) into pixels.
function decodePng(buf) {
  let off = 8, w = 0, h = 0, ch = 0;
  const idat = [];
  while (off < buf.length) {
    const len = buf.readUInt32BE(off), type = buf.toString('ascii', off + 4, off + 8);
    const data = buf.subarray(off + 8, off + 8 + len);
    if (type === 'IHDR') {
      w = data.readUInt32BE(0); h = data.readUInt32BE(4);
      if (data[8] !== 8 || data[12] !== 0) throw new Error('unsupported png');
      ch = data[9] === 6 ? 4 : data[9] === 2 ? 3 : 0;
      if (!ch) throw new Error('unsupported colour type ' + data[9]);
    } else if (type === 'IDAT') idat.push(data);
    off += 12 + len;
  }
  const raw = zlib.inflateSync(Buffer.concat(idat)), stride = w * ch;
  const px = Buffer.alloc(h * stride);
  for (let y = 0; y < h; y++) {
    const f = raw[y * (stride + 1)], src = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= ch ? px[y * stride + x - ch] : 0, b = y ? px[(y - 1) * stride + x] : 0;
      const c = x >= ch && y ? px[(y - 1) * stride + x - ch] : 0;
      let p = src[x];
      if (f === 1) p += a;
      else if (f === 2) p += b;
      else if (f === 3) p += (a + b) >> 1;
      else if (f === 4) {
        const pa = Math.abs(b - c), pb = Math.abs(a - c), pc = Math.abs(a + b - 2 * c);
        p += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      px[y * stride + x] = p & 255;
    }
  }
  return { w, h, ch, px };
}

(async () => {
  const userDir = fs.mkdtempSync(path.join(os.tmpdir(), 'mha-viz-chromium-'));
  const ctx = await chromium.launchPersistentContext(userDir, {
    executablePath: exe,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1200, height: 900 },
  });
  try {
    const page = ctx.pages()[0] || await ctx.newPage();
    const errors = [], requests = [];
    page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
    page.on('pageerror', (e) => errors.push(String(e)));
    page.on('request', (r) => requests.push(r.url()));
    await page.goto(url, { waitUntil: 'load' });
    await page.waitForSelector('#heat .cell');

    const L = 6, S = 6, H = 2;
    check(await page.locator('#heat .cell').count() === L * S, 'heatmap has L*S cells');
    check(await page.locator('#heads button').count() === H + 1, 'a button per head + average');
    check(await page.locator('.thumb canvas').count() === H + 1, 'a small heatmap per head');
    check(await page.locator('#stats tbody tr').count() === H + 1, 'a statistics row per head');
    check(await page.locator('#q-4 text').textContent() === '</script>',
          'a "</script>" token is shown as text');

    const hl = () => page.evaluate(() => Array.from(document.querySelectorAll('#heat .cell.hl'))
      .map((c) => c.getAttribute('data-i') + ',' + c.getAttribute('data-j')).join(' '));
    check(await hl() === '', 'nothing highlighted before hovering');
    await page.hover('#q-2');
    const row = await hl();
    check(row === '2,0 2,1 2,2 2,3 2,4 2,5', 'hovering query token 2 highlights row 2: ' + row);
    const visible = await page.locator('.pair:not(.off)').count();
    check(visible === S, 'only the hovered token\'s ' + S + ' lines stay: ' + visible);
    await page.screenshot({ path: path.join(outdir, 'hover.png'), fullPage: true });
    await page.hover('#k-3');
    const col = await hl();
    check(col === '0,3 1,3 2,3 3,3 4,3 5,3', 'hovering key token 3 highlights column 3: ' + col);
    await page.mouse.move(5, 5);
    check(await hl() === '', 'leaving the token clears the highlight');

    const fills = () => page.evaluate(() =>
      Array.from(document.querySelectorAll('#heat .cell')).map((c) => c.getAttribute('fill')).join(';'));
    const f0 = await fills();
    await page.click('#btn-1');
    const f1 = await fills();
    check(f0 !== f1, 'selecting head 1 changes the heatmap');
    check((await page.locator('#heat-title').textContent()) === 'head 1', 'the title follows the head');
    await page.click('#btn-avg');
    check((await page.locator('#heat-title').textContent()).startsWith('average'), 'average view');
    await page.click('#btn-0');

    const shot = path.join(outdir, 'page.png');
    const png = await page.screenshot({ path: shot, fullPage: true });
    const img = decodePng(png);
    const colours = new Set();
    for (let i = 0; i < img.w * img.h; i += 7) {
      const o = i * img.ch;
      colours.add((img.px[o] << 16) | (img.px[o + 1] << 8) | img.px[o + 2]);
    }
    check(img.w >= 600 && img.h >= 400, 'screenshot ' + img.w + 'x' + img.h);
    check(colours.size >= 20, 'screenshot is not blank: ' + colours.size + ' colours sampled');

    check(errors.length === 0, 'no console errors' + (errors.length ? ': ' + errors.join(' | ') : ''));
    const foreign = requests.filter((r) => r !== url);
    check(foreign.length === 0 && requests.includes(url),
          'no request but the page itself' + (foreign.length ? ': ' + foreign.join(' ') : ''));
  } finally {
    await ctx.close();
    fs.rmSync(userDir, { recursive: true, force: true });
  }
  console.log(failures ? failures + ' check(s) failed' : 'all browser checks passed');
  process.exit(failures ? 1 : 0);
})().catch((e) => { console.error('viz_browser: ' + (e && e.stack || e)); process.exit(1); });
