/* html.c - one self-contained HTML page: inline CSS, JS and data, no network request.
 *
 * The page shows every head and their average: a head selector, the token view (query tokens
 * on the left, key tokens on the right, a line per pair whose opacity is the weight; hovering
 * a token keeps only its lines and highlights its heatmap row or column), a heatmap of the
 * selected head, small heatmaps of all heads, and a statistics table. The data is a JSON
 * block (<script type="application/json">) with '<', '>' and '&' escaped, so no token can
 * close the script element. The CSS and JS below are plain text kept as C literals.
 *
 * Large views (html_block): the data holds the means of f x f blocks (mha__viz_view_downsample,
 * the terminal's averaging) instead of every weight, a note under the heatmap says so, and the
 * tooltip gives a block's ranges and mean; one listener on the heatmap serves every cell. */
#include "viz_internal.h"

#include <stdio.h>
#include <string.h>

static const char page_css[] =
    ":root { --ink: #1d2430; --muted: #667085; --line: #2f6fdb; --panel: #ffffff; --bg: #f4f6fa; "
    "}\n"
    "* { box-sizing: border-box; }\n"
    "body { margin: 0; padding: 20px 28px; background: var(--bg); color: var(--ink);\n"
    "  font: 14px/1.4 system-ui, -apple-system, \"Segoe UI\", Roboto, sans-serif; }\n"
    "h1 { font-size: 20px; margin: 0 0 4px; }\n"
    "h2 { font-size: 15px; margin: 0 0 10px; }\n"
    ".sub { color: var(--muted); margin: 0 0 14px; }\n"
    "nav { display: flex; flex-wrap: wrap; gap: 6px; margin-bottom: 16px; }\n"
    "nav button { border: 1px solid #c9d1de; background: #fff; border-radius: 14px; padding: 4px "
    "12px;\n"
    "  font: inherit; cursor: pointer; color: var(--ink); }\n"
    "nav button:hover { border-color: var(--line); }\n"
    "nav button.sel { background: var(--line); border-color: var(--line); color: #fff; }\n"
    ".row { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }\n"
    ".card { background: var(--panel); border-radius: 10px; padding: 14px 16px;\n"
    "  box-shadow: 0 1px 3px rgba(16, 24, 40, .12); margin-bottom: 18px; }\n"
    ".hint { color: var(--muted); font-size: 12px; margin: 6px 0 0; }\n"
    "svg text { font: 12px system-ui, sans-serif; fill: var(--ink); }\n"
    ".tok { cursor: default; }\n"
    ".tok rect { fill: transparent; }\n"
    ".tok.hl rect { fill: #dce7fb; }\n"
    ".tok.hl text { font-weight: 600; }\n"
    ".pair { stroke: var(--line); stroke-width: 2; }\n"
    ".pair.off { display: none; }\n"
    ".cell { stroke: none; }\n"
    ".cell.dim { opacity: .28; }\n"
    ".cell.hl { stroke: #e4572e; stroke-width: 1.5; }\n"
    "#info { min-height: 20px; margin-top: 6px; font-variant-numeric: tabular-nums; }\n"
    ".bar { display: flex; align-items: center; gap: 8px; font-size: 12px; color: var(--muted);\n"
    "  margin-top: 8px; }\n"
    ".bar div { width: 180px; height: 10px; border-radius: 3px; }\n"
    "#thumbs { display: flex; flex-wrap: wrap; gap: 14px; }\n"
    ".thumb { text-align: center; cursor: pointer; font-size: 12px; color: var(--muted); }\n"
    ".thumb canvas { display: block; border: 2px solid transparent; border-radius: 4px;\n"
    "  image-rendering: pixelated; margin-bottom: 3px; }\n"
    ".thumb.sel canvas { border-color: var(--line); }\n"
    ".thumb.sel { color: var(--ink); font-weight: 600; }\n"
    "table { border-collapse: collapse; font-variant-numeric: tabular-nums; }\n"
    "th, td { padding: 4px 12px; text-align: right; border-bottom: 1px solid #e6e9ef; }\n"
    "th:first-child, td:first-child { text-align: left; }\n"
    "th { color: var(--muted); font-weight: 600; }\n"
    "tr.sel td { background: #eef3fd; font-weight: 600; }\n"
    "tbody tr { cursor: pointer; }\n";

static const char page_js[] =
    "(function () {\n"
    "  'use strict';\n"
    "  var D = JSON.parse(document.getElementById('mha-data').textContent);\n"
    "  var H = D.H, L = D.L, S = D.S, NS = 'http://www.w3.org/2000/svg';\n"
    "  /* the matrices are R x C cells: weights (F = 1), or means of F x F blocks */\n"
    "  var F = D.f, R = D.R, C = D.C;\n"
    "  var span = D.vmax - D.vmin;\n"
    "  var qt = D.q || [], kt = D.k || [], i, j, h;\n"
    "  for (i = 0; i < L; i++) if (qt[i] === undefined) qt[i] = String(i);\n"
    "  for (j = 0; j < S; j++) if (kt[j] === undefined) kt[j] = String(j);\n"
    "  var avg = new Array(R * C);\n"
    "  for (i = 0; i < R * C; i++) {\n"
    "    var s = 0;\n"
    "    for (h = 0; h < H; h++) s += D.w[h][i];\n"
    "    avg[i] = s / H;\n"
    "  }\n"
    "  var names = D.heads.concat(['average of ' + H + (H === 1 \? ' head' : ' heads')]);\n"
    "  var stats = D.stats.concat([D.avgStats]);\n"
    "  function mat(x) { return x === H \? avg : D.w[x]; }\n"
    "  function norm(x) { var t = (x - D.vmin) / span; return t < 0 \? 0 : t > 1 \? 1 : t; }\n"
    "  var A = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];\n"
    "  function rgb(t) {\n"
    "    var x = t * 4, k = Math.min(3, Math.floor(x)), f = x - k, c = [0, 0, 0];\n"
    "    for (var n = 0; n < 3; n++) c[n] = Math.round(A[k][n] + f * (A[k + 1][n] - A[k][n]));\n"
    "    return 'rgb(' + c.join(',') + ')';\n"
    "  }\n"
    "  function el(tag, attrs, parent) {\n"
    "    var e = document.createElementNS(NS, tag);\n"
    "    for (var a in attrs) e.setAttribute(a, attrs[a]);\n"
    "    if (parent) parent.appendChild(e);\n"
    "    return e;\n"
    "  }\n"
    "  function fmt(x) { var a = Math.abs(x);\n"
    "    return x !== 0 && a < 1e-4 \? x.toPrecision(4) : x.toFixed(4); }\n"
    "  function scaleText(x) { var a = Math.abs(x);\n"
    "    return a >= 100 || (x !== 0 && a < 0.01) \? x.toPrecision(3) : x.toFixed(2); }\n"
    "  var cur = D.initial, hover = null;\n"
    "\n"
    "  /* head selector */\n"
    "  var nav = document.getElementById('heads'), buttons = [];\n"
    "  var order = [H];\n"
    "  for (h = 0; h < H; h++) order.push(h);\n"
    "  order.forEach(function (x) {\n"
    "    var b = document.createElement('button');\n"
    "    b.textContent = names[x];\n"
    "    b.id = 'btn-' + (x === H \? 'avg' : x);\n"
    "    b.addEventListener('click', function () { select(x); });\n"
    "    nav.appendChild(b);\n"
    "    buttons[x] = b;\n"
    "  });\n"
    "\n"
    "  /* token view: query tokens left, key tokens right, one line per pair */\n"
    "  var lines = document.getElementById('lines'), pairs = [], qEls = [], kEls = [];\n"
    "  var rh = 22, colw = 130, gapw = 150;\n"
    "  var showLines = F === 1 && L * S <= 20000;\n"
    "  if (showLines) {\n"
    "    lines.setAttribute('width', colw * 2 + gapw);\n"
    "    lines.setAttribute('height', Math.max(L, S) * rh + 8);\n"
    "    var pg = el('g', {}, lines);\n"
    "    for (i = 0; i < L; i++)\n"
    "      for (j = 0; j < S; j++)\n"
    "        pairs.push(el('line', { 'class': 'pair', x1: colw + 4, y1: i * rh + rh / 2 + 4,\n"
    "                                x2: colw + gapw - 4, y2: j * rh + rh / 2 + 4 }, pg));\n"
    "    var mk = function (label, x, y, anchor, id, cls) {\n"
    "      var g = el('g', { 'class': 'tok ' + cls, id: id }, lines);\n"
    "      el('rect', { x: x === colw \? 2 : colw + gapw, y: y + 4, width: colw - 2, height: rh - "
    "2,\n"
    "                   rx: 4 }, g);\n"
    "      var t = el('text', { x: x === colw \? colw - 6 : colw + gapw + 6, y: y + rh / 2 + 5,\n"
    "                           'text-anchor': anchor }, g);\n"
    "      t.textContent = label;\n"
    "      return g;\n"
    "    };\n"
    "    for (i = 0; i < L; i++) qEls.push(mk(qt[i], colw, i * rh, 'end', 'q-' + i, 'q'));\n"
    "    for (j = 0; j < S; j++) kEls.push(mk(kt[j], colw + gapw, j * rh, 'start', 'k-' + j, "
    "'k'));\n"
    "    qEls.forEach(function (e, n) { on(e, 'q', n); });\n"
    "    kEls.forEach(function (e, n) { on(e, 'k', n); });\n"
    "  } else {\n"
    "    lines.style.display = 'none';\n"
    "    document.getElementById('tokhint').textContent =\n"
    "      'too many token pairs for the line view (' + L + ' x ' + S + '): use the heatmap';\n"
    "  }\n"
    "  function on(e, kind, n) {\n"
    "    e.addEventListener('mouseenter', function () { hover = { kind: kind, n: n }; paint(); "
    "});\n"
    "    e.addEventListener('mouseleave', function () { hover = null; paint(); });\n"
    "  }\n"
    "\n"
    "  /* heatmap of the selected head */\n"
    "  var heat = document.getElementById('heat');\n"
    "  var cs = Math.max(3, Math.min(32, Math.floor(440 / Math.max(R, C))));\n"
    "  var labels = F === 1 && cs >= 10, lw = 0, th = 0;\n"
    "  if (labels) {\n"
    "    var longest = function (a) { return a.reduce(function (m, x) { return Math.max(m, "
    "x.length); }, 0); };\n"
    "    lw = Math.min(16, longest(qt)) * 7 + 10;\n"
    "    th = Math.min(16, longest(kt)) * 7 + 10;\n"
    "  }\n"
    "  heat.setAttribute('width', lw + C * cs + 4);\n"
    "  heat.setAttribute('height', th + R * cs + 4);\n"
    "  var cells = [];\n"
    "  for (i = 0; i < R; i++)\n"
    "    for (j = 0; j < C; j++)\n"
    "      cells.push(el('rect', { 'class': 'cell', x: lw + j * cs, y: th + i * cs, width: cs,\n"
    "                              height: cs, 'data-i': i, 'data-j': j }, heat));\n"
    "  /* one listener for every cell: the cell under the mouse says which it is */\n"
    "  heat.addEventListener('mouseover', function (e) {\n"
    "    var t = e.target;\n"
    "    if (t.classList && t.classList.contains('cell'))\n"
    "      cellInfo(+t.getAttribute('data-i'), +t.getAttribute('data-j'));\n"
    "  });\n"
    "  function cut(x) { var c = Array.from(x); /* code points: never half an emoji */\n"
    "    return c.length > 16 \? c.slice(0, 15).join('') + '\\u2026' : x; }\n"
    "  if (labels) {\n"
    "    for (i = 0; i < L; i++)\n"
    "      el('text', { x: lw - 5, y: th + i * cs + cs / 2 + 4, 'text-anchor': 'end' }, heat)\n"
    "        .textContent = cut(qt[i]);\n"
    "    for (j = 0; j < S; j++)\n"
    "      el('text', { transform: 'translate(' + (lw + j * cs + cs / 2 + 4) + ',' + (th - 5) +\n"
    "                   ') rotate(-90)' }, heat).textContent = cut(kt[j]);\n"
    "  }\n"
    "  var info = document.getElementById('info');\n"
    "  function span2(a, n) { var z = Math.min(n, a * F + F) - 1;\n"
    "    return a * F === z \? String(z) : a * F + '\\u2013' + z; }\n"
    "  function cellInfo(a, b) {\n"
    "    if (F > 1) { /* a block: its queries, keys, size and mean */\n"
    "      var nq = Math.min(L, a * F + F) - a * F, nk = Math.min(S, b * F + F) - b * F;\n"
    "      info.textContent = 'queries ' + span2(a, L) + ' \\u2192 keys ' + span2(b, S) + ' (' +\n"
    "        nq + ' \\u00d7 ' + nk + ' weights): mean ' + mat(cur)[a * C + b].toPrecision(4);\n"
    "      return;\n"
    "    }\n"
    "    info.textContent = 'query ' + a + ' \\u201c' + qt[a] + '\\u201d \\u2192 key ' + b + ' "
    "\\u201c' +\n"
    "      kt[b] + '\\u201d: ' + fmt(mat(cur)[a * S + b]);\n"
    "  }\n"
    "  heat.addEventListener('mouseleave', function () { info.textContent = ''; });\n"
    "  var stops = [];\n"
    "  for (i = 0; i <= 8; i++) stops.push(rgb(i / 8));\n"
    "  document.getElementById('grad').style.background = 'linear-gradient(to right,' + "
    "stops.join(',') + ')';\n"
    "  document.getElementById('vmin').textContent = scaleText(D.vmin);\n"
    "  document.getElementById('vmax').textContent = scaleText(D.vmax);\n"
    "\n"
    "  /* small heatmaps of every head */\n"
    "  var thumbs = document.getElementById('thumbs'), thumbEls = [];\n"
    "  var ts = Math.max(1, Math.min(8, Math.floor(120 / Math.max(R, C))));\n"
    "  order.forEach(function (x) {\n"
    "    var d = document.createElement('div'), c = document.createElement('canvas');\n"
    "    d.className = 'thumb';\n"
    "    c.width = C * ts; c.height = R * ts;\n"
    "    var g = c.getContext('2d'), m = mat(x);\n"
    "    for (var a = 0; a < R; a++)\n"
    "      for (var b = 0; b < C; b++) { g.fillStyle = rgb(norm(m[a * C + b])); g.fillRect(b * ts, "
    "a * ts, ts, ts); }\n"
    "    d.appendChild(c);\n"
    "    d.appendChild(document.createTextNode(names[x]));\n"
    "    d.addEventListener('click', function () { select(x); });\n"
    "    thumbs.appendChild(d);\n"
    "    thumbEls[x] = d;\n"
    "  });\n"
    "\n"
    "  /* statistics */\n"
    "  var tb = document.querySelector('#stats tbody'), rows = [];\n"
    "  order.forEach(function (x) {\n"
    "    var st = stats[x], tr = document.createElement('tr');\n"
    "    [names[x], st.entropy.toFixed(3), st.maxEntropy.toFixed(3),\n"
    "     kt[st.top] + ' (' + st.top + ')', fmt(st.topMean), fmt(st.max)].forEach(function (v) {\n"
    "      var td = document.createElement('td'); td.textContent = v; tr.appendChild(td);\n"
    "    });\n"
    "    tr.addEventListener('click', function () { select(x); });\n"
    "    tb.appendChild(tr);\n"
    "    rows[x] = tr;\n"
    "  });\n"
    "\n"
    "  function paint() {\n"
    "    var m = mat(cur), n;\n"
    "    document.getElementById('heat-title').textContent = names[cur];\n"
    "    for (n = 0; n < R * C; n++) {\n"
    "      var a = Math.floor(n / C), b = n % C, c = cells[n];\n"
    "      c.setAttribute('fill', rgb(norm(m[n])));\n"
    "      var inSel = hover && (hover.kind === 'q' \? a === hover.n : b === hover.n);\n"
    "      c.classList.toggle('hl', !!inSel);\n"
    "      c.classList.toggle('dim', !!hover && !inSel);\n"
    "      if (showLines) {\n"
    "        var p = pairs[n];\n"
    "        p.setAttribute('stroke-opacity', norm(m[n]).toFixed(3));\n"
    "        p.classList.toggle('off', !!hover && !inSel);\n"
    "      }\n"
    "    }\n"
    "    qEls.forEach(function (e, k) { e.classList.toggle('hl', !!hover && hover.kind === 'q' && "
    "hover.n === k); });\n"
    "    kEls.forEach(function (e, k) { e.classList.toggle('hl', !!hover && hover.kind === 'k' && "
    "hover.n === k); });\n"
    "  }\n"
    "  function select(x) {\n"
    "    cur = x;\n"
    "    buttons.forEach(function (b, k) { b.classList.toggle('sel', k === x); });\n"
    "    thumbEls.forEach(function (t, k) { t.classList.toggle('sel', k === x); });\n"
    "    rows.forEach(function (t, k) { t.classList.toggle('sel', k === x); });\n"
    "    paint();\n"
    "  }\n"
    "  document.addEventListener('keydown', function (e) {\n"
    "    var pos = order.indexOf(cur);\n"
    "    if (e.key === 'ArrowRight') select(order[(pos + 1) % order.length]);\n"
    "    if (e.key === 'ArrowLeft') select(order[(pos + order.length - 1) % order.length]);\n"
    "  });\n"
    "  select(cur);\n"
    "  window.mhaViz = { select: select, head: function () { return cur; } };\n"
    "})();\n";

/* A JSON string: quotes, backslashes and control characters escaped, and <, >, & as \u003c
 * etc. so that the text can never end the <script> element. */
static void json_str(viz_out *o, const char *s) {
    mha__viz_puts(o, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') mha__viz_printf(o, "\\%c", c);
        else if (c < 0x20 || c == '<' || c == '>' || c == '&') mha__viz_printf(o, "\\u%04x", c);
        else mha__viz_put(o, s, 1);
    }
    mha__viz_puts(o, "\"");
}

static void json_strs(viz_out *o, char *const *a, int64_t n) {
    if (!a) {
        mha__viz_puts(o, "null");
        return;
    }
    mha__viz_puts(o, "[");
    for (int64_t i = 0; i < n; i++) {
        if (i) mha__viz_puts(o, ",");
        json_str(o, a[i]);
    }
    mha__viz_puts(o, "]");
}

static void json_stats(viz_out *o, const mha_viz_stats *s) {
    mha__viz_printf(o,
                    "{\"entropy\":%.6g,\"maxEntropy\":%.6g,\"top\":%lld,\"topMean\":%.6g,"
                    "\"max\":%.6g}",
                    s->entropy, s->max_entropy, (long long)s->top_key, s->top_key_mean,
                    s->max_weight);
}

/* The page's block size: the smallest f for which the heatmap has at most HTML_MAX_SIDE cells
 * a side and the page's data at most HTML_MAX_VALUES block means (H heads of R x C), so that
 * the page stays small and Chromium draws it in a few seconds whatever L and S. */
#define HTML_MAX_SIDE 256
#define HTML_MAX_VALUES ((int64_t)1 << 20)
static int64_t html_block(int64_t H, int64_t L, int64_t S) {
    const int64_t mx = L > S ? L : S;
    int64_t f = (mx + HTML_MAX_SIDE - 1) / HTML_MAX_SIDE;
    while (H * ((L + f - 1) / f) * ((S + f - 1) / f) > HTML_MAX_VALUES) f++;
    return f;
}

mha_status mha_viz_html(mha_ctx *ctx, const float *w, int64_t H, int64_t L, int64_t S,
                        const mha_viz_opts *opts, mha_write_fn fn, void *user) {
    static const char *F = "mha_viz_html";
    mha__clear(ctx);
    if (!fn) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: fn: got NULL, expected a writer", F);
    viz_view v;
    mha_status st = mha__viz_view_make(ctx, F, w, H, L, S, opts, 1, 0, &v);
    if (st) return st;
    int64_t initial = !opts || opts->view == MHA_VIZ_HEAD ? (opts ? opts->head : 0) : H;
    if (opts && opts->view == MHA_VIZ_ALL) initial = 0;
    size_t LS = (size_t)L * (size_t)S;
    mha_viz_stats *stats = mha__calloc((size_t)H + 1, sizeof *stats);
    float *avg = mha__malloc(LS * sizeof *avg);
    char *title = mha__viz_clean(v.title ? v.title : "attention weights", 0);
    if (!stats || !avg || !title) {
        mha__free(stats), mha__free(avg), mha__free(title);
        mha__viz_view_free(&v);
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory", F);
    }
    mha__viz_average(v.m, H, LS, avg);
    st = mha_viz_head_stats(ctx, v.m, H, L, S, stats);
    if (!st) st = mha_viz_head_stats(ctx, avg, 1, L, S, stats + H);
    /* the statistics from every weight; the page draws blocks when the view is large */
    if (!st) st = mha__viz_view_downsample(ctx, F, &v, html_block(H, L, S));
    if (st) {
        mha__free(stats), mha__free(avg), mha__free(title);
        mha__viz_view_free(&v);
        return st;
    }
    mha__clear(ctx);

    viz_out o;
    mha__viz_out_init(&o, fn, user);
    mha__viz_puts(&o, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                      "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
                      "<title>");
    mha__viz_xml(&o, title);
    mha__viz_puts(&o, "</title>\n<style>\n");
    mha__viz_puts(&o, page_css);
    mha__viz_puts(&o, "</style>\n</head>\n<body>\n<h1>");
    mha__viz_xml(&o, title);
    mha__viz_printf(&o,
                    "</h1>\n<p class=\"sub\">%lld heads, %lld queries \xc3\x97 %lld keys. Hover "
                    "a token to see where it attends (query, left) or what attends to it (key, "
                    "right); arrow keys switch heads.</p>\n",
                    (long long)H, (long long)L, (long long)S);
    mha__viz_puts(&o, "<nav id=\"heads\"></nav>\n<div class=\"row\">\n"
                      "<div class=\"card\"><h2>token view</h2><svg id=\"lines\"></svg>"
                      "<p class=\"hint\" id=\"tokhint\">line opacity = attention weight</p></div>\n"
                      "<div class=\"card\"><h2 id=\"heat-title\"></h2><svg id=\"heat\"></svg>"
                      "<div id=\"info\"></div><div class=\"bar\"><span id=\"vmin\"></span>"
                      "<div id=\"grad\"></div><span id=\"vmax\"></span></div>");
    if (v.f > 1) /* as the terminal says it */
        mha__viz_printf(&o,
                        "<p class=\"hint\" id=\"downsample\">downsampled to fit the page: each "
                        "cell is the mean of a %lldx%lld block (%lld x %lld weights as %lld x %lld "
                        "cells); hover a cell for its queries, keys and mean</p>",
                        (long long)v.f, (long long)v.f, (long long)L, (long long)S, (long long)v.R,
                        (long long)v.C);
    mha__viz_puts(&o, "</div>\n</div>\n"
                      "<div class=\"card\"><h2>all heads</h2><div id=\"thumbs\"></div></div>\n"
                      "<div class=\"card\"><h2>statistics</h2><table id=\"stats\"><thead><tr>"
                      "<th>head</th><th>mean row entropy (bits)</th><th>uniform</th>"
                      "<th>most attended key</th><th>its mean weight</th><th>max weight</th></tr>"
                      "</thead><tbody></tbody></table>"
                      "<p class=\"hint\">entropy 0: every query looks at one key; uniform: spread "
                      "evenly</p></div>\n");
    mha__viz_puts(&o, "<script type=\"application/json\" id=\"mha-data\">");
    mha__viz_printf(&o,
                    "{\"H\":%lld,\"L\":%lld,\"S\":%lld,\"f\":%lld,\"R\":%lld,\"C\":%lld,"
                    "\"vmin\":%.6g,\"vmax\":%.6g,\"initial\":%lld,\"q\":",
                    (long long)H, (long long)L, (long long)S, (long long)v.f, (long long)v.R,
                    (long long)v.C, (double)v.vmin, (double)v.vmax, (long long)initial);
    json_strs(&o, v.qtok, L);
    mha__viz_puts(&o, ",\"k\":");
    json_strs(&o, v.ktok, S);
    mha__viz_puts(&o, ",\"heads\":");
    json_strs(&o, v.titles, H);
    mha__viz_puts(&o, ",\"stats\":[");
    for (int64_t h = 0; h < H; h++) {
        if (h) mha__viz_puts(&o, ",");
        json_stats(&o, &stats[h]);
    }
    mha__viz_puts(&o, "],\"avgStats\":");
    json_stats(&o, &stats[H]);
    mha__viz_puts(&o, ",\"w\":[");
    const size_t RC = (size_t)v.R * (size_t)v.C; /* L x S weights, or the block means */
    for (int64_t h = 0; h < H && !o.failed; h++) {
        mha__viz_puts(&o, h ? ",[" : "[");
        for (size_t e = 0; e < RC; e++)
            mha__viz_printf(&o, e ? ",%.5g" : "%.5g", (double)v.m[(size_t)h * RC + e]);
        mha__viz_puts(&o, "]");
    }
    mha__viz_puts(&o, "]}</script>\n<script>\n");
    mha__viz_puts(&o, page_js);
    mha__viz_puts(&o, "</script>\n</body>\n</html>\n");
    mha__free(stats), mha__free(avg), mha__free(title);
    mha__viz_view_free(&v);
    return mha__viz_out_finish(ctx, F, &o);
}

mha_status mha_viz_html_file(mha_ctx *ctx, const float *w, int64_t H, int64_t L, int64_t S,
                             const mha_viz_opts *opts, const char *path) {
    return mha__viz_to_file(ctx, "mha_viz_html_file", mha_viz_html, w, H, L, S, opts, path);
}
