/* test_viz.c - the renderers of mha_viz.h: byte-exact golden terminal renderings (ASCII,
 * Unicode, colour), width limits (also with wide CJK/emoji and zero-width characters, measured
 * by an independent copy of the width rule), key labels aligned with their cells, SVG cells,
 * PNG geometry and colours (decoded with libpng), the PNG's text (each label kind where
 * mha_viz.h puts it, read back glyph by glyph), byte-exact golden PNGs, the bitmap font,
 * the HTML page's self-containment, file wrappers, statistics and every error path.
 *
 * MHA_UPDATE_GOLDEN=1 rewrites tests/golden/viz/ (then look at the files before committing;
 * tests/golden/viz/README.md).
 * "test_viz --write-html F" / "--write-svg F" write the sample page / image for the browser
 * and XML checks registered in tests/viz.cmake; "--write-html-large N H F" a large view's page
 * (write_large). */
#include "harness.h"
#include "core/internal.h"
#include "mha_viz.h"
#include "viz/viz_internal.h"

#if defined(MHA_TEST_PNG)
#include <png.h>
#endif

/* ---- fixtures: exact, hand-made patterns ---------------------------------------------- */

#define TL 6
static const char *const toks[TL] = {"the", "cat", "sat", "on", "the", "mat"};

/* [2, 6, 6]: head 0 looks mostly at itself, head 1 is causal and uniform over the past. */
static void fixture_two_heads(float *w) {
    for (int i = 0; i < TL; i++)
        for (int j = 0; j < TL; j++) {
            w[i * TL + j] = i == j ? 0.75f : 0.05f;
            w[TL * TL + i * TL + j] = j <= i ? 1.0f / (float)(i + 1) : 0.0f;
        }
}

/* [1, n, n]: a band of width 5 around the diagonal plus a column everyone looks at (key 0). */
static void fixture_band(float *w, int n) {
    for (int i = 0; i < n; i++) {
        double s = 0;
        for (int j = 0; j < n; j++) {
            int d = i > j ? i - j : j - i;
            float x = (d <= 2 ? (float)(3 - d) : 0.0f) + (j == 0 ? 4.0f : 0.0f);
            w[i * n + j] = x;
            s += x;
        }
        for (int j = 0; j < n; j++) w[i * n + j] = (float)(w[i * n + j] / s);
    }
}

/* ---- a growable buffer as the write callback ------------------------------------------- */
typedef struct {
    char *p;
    size_t n, cap;
    long fail_after; /* fail once this many calls were made (< 0: never) */
    long calls;
} buf;

static int buf_write(void *user, const void *data, size_t size) {
    buf *b = user;
    if (b->fail_after >= 0 && b->calls >= b->fail_after) return 1;
    b->calls++;
    if (b->n + size + 1 > b->cap) {
        size_t cap = (b->n + size + 1) * 2;
        char *q = realloc(b->p, cap);
        if (!q) return 1;
        b->p = q, b->cap = cap;
    }
    memcpy(b->p + b->n, data, size);
    b->n += size;
    b->p[b->n] = 0;
    return 0;
}
static buf buf_new(void) {
    buf b = {NULL, 0, 0, -1, 0};
    return b;
}

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    if (p) p[n] = 0;
    fclose(f);
    if (len) *len = (size_t)n;
    return p;
}

static int png_same_pixels(const char *png, size_t n, const buf *b);

/* Compares with tests/golden/viz/<name>, or rewrites it with MHA_UPDATE_GOLDEN=1. */
static int golden(const char *name, const buf *b) {
    char path[1024];
    snprintf(path, sizeof path, "%s/golden/viz/%s", MHA_TEST_DIR, name);
    const char *upd = getenv("MHA_UPDATE_GOLDEN");
    if (upd && *upd == '1') {
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(b->p, 1, b->n, f) != b->n) {
            FAILF("cannot write %s", path);
            if (f) fclose(f);
            return 0;
        }
        fclose(f);
        return 1;
    }
    size_t n;
    char *want = read_all(path, &n);
    if (!want) {
        FAILF("missing golden file %s (run with MHA_UPDATE_GOLDEN=1 once, then review it)", path);
        return 0;
    }
    int ok = n == b->n && memcmp(want, b->p, n) == 0;
    if (!ok && strstr(name, ".png")) {
        FAILF("%s differs from the rendering (%zu bytes, expected %zu): %s", name, b->n, n,
              png_same_pixels(want, n, b) ? "the same pixels, encoded differently (another "
                                            "libpng or zlib?)"
                                          : "the pixels differ");
    } else if (!ok) {
        size_t i = 0, line = 1;
        while (i < n && i < b->n && want[i] == b->p[i]) line += want[i++] == '\n';
        FAILF("%s differs from the rendering at byte %zu (line %zu); got:\n%s", name, i, line,
              b->p);
    }
    free(want);
    return ok;
}

static mha_status render_term(buf *b, const float *w, int64_t H, int64_t L, int64_t S,
                              mha_viz_view view, int64_t head, mha_viz_term_mode mode, int width,
                              int tokens) {
    mha_viz_opts o = mha_viz_opts_default();
    o.view = view, o.head = head, o.term_mode = mode, o.width = width;
    if (tokens) o.query_tokens = toks;
    return mha_viz_term(NULL, w, H, L, S, &o, buf_write, b);
}

TEST(golden_terminal) {
    float w2[2 * TL * TL], band[100 * 100];
    fixture_two_heads(w2);
    fixture_band(band, 100);
    static const struct {
        const char *name;
        int which; /* 0: two heads, 1: band 100 */
        mha_viz_view view;
        int head;
        mha_viz_term_mode mode;
        int width, tokens;
    } cases[] = {
        {"ascii_head0_tokens.txt", 0, MHA_VIZ_HEAD, 0, MHA_VIZ_TERM_ASCII, 80, 1},
        {"unicode_head1_positions.txt", 0, MHA_VIZ_HEAD, 1, MHA_VIZ_TERM_UNICODE, 80, 0},
        {"unicode_all_tokens.txt", 0, MHA_VIZ_ALL, 0, MHA_VIZ_TERM_UNICODE, 80, 1},
        {"unicode_average_tokens.txt", 0, MHA_VIZ_AVERAGE, 0, MHA_VIZ_TERM_UNICODE, 80, 1},
        {"color_all_tokens.txt", 0, MHA_VIZ_ALL, 0, MHA_VIZ_TERM_COLOR, 80, 1},
        {"unicode_band100_w60.txt", 1, MHA_VIZ_HEAD, 0, MHA_VIZ_TERM_UNICODE, 60, 0},
        {"ascii_band100_w140.txt", 1, MHA_VIZ_HEAD, 0, MHA_VIZ_TERM_ASCII, 140, 0},
        {"color_band100_w80.txt", 1, MHA_VIZ_HEAD, 0, MHA_VIZ_TERM_COLOR, 80, 0},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        buf b = buf_new();
        mha_status st = cases[c].which == 0
                            ? render_term(&b, w2, 2, TL, TL, cases[c].view, cases[c].head,
                                          cases[c].mode, cases[c].width, cases[c].tokens)
                            : render_term(&b, band, 1, 100, 100, cases[c].view, cases[c].head,
                                          cases[c].mode, cases[c].width, 0);
        ASSERT_OK(NULL, st);
        int ok = golden(cases[c].name, &b);
        free(b.p);
        if (!ok) return;
    }
}

/* Display width of a line: code points, skipping ESC [ ... m sequences. */
static int display_cols(const char *s, size_t n) {
    int cols = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\x1b') {
            while (i < n && s[i] != 'm') i++;
            continue;
        }
        if (((unsigned char)s[i] & 0xC0) != 0x80) cols++;
    }
    return cols;
}

TEST(terminal_fits_width) {
    static const int sizes[][3] = {{1, 1, 1},    {2, 6, 6},    {3, 7, 33},
                                   {1, 200, 17}, {4, 45, 300}, {2, 1, 500}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int H = sizes[s][0], L = sizes[s][1], S = sizes[s][2];
        float *w = malloc(sizeof(float) * (size_t)(H * L * S));
        for (int e = 0; e < H * L * S; e++) w[e] = (float)((e * 7919) % 101) / 100.0f;
        for (int mode = 0; mode < 3; mode++)
            for (int width = 40; width <= 160; width += 13)
                for (int view = 0; view < 3; view++) {
                    buf b = buf_new();
                    mha_status st = render_term(&b, w, H, L, S, (mha_viz_view)view, H - 1,
                                                (mha_viz_term_mode)mode, width, 0);
                    if (st != MHA_OK) {
                        FAILF("H=%d L=%d S=%d mode %d width %d view %d: %s", H, L, S, mode, width,
                              view, mha_last_errmsg());
                        free(b.p), free(w);
                        return;
                    }
                    const char *p = b.p;
                    while (*p) {
                        const char *nl = strchr(p, '\n');
                        size_t n = nl ? (size_t)(nl - p) : strlen(p);
                        int cols = display_cols(p, n);
                        if (cols > width) {
                            FAILF("H=%d L=%d S=%d mode %d view %d: a line of %d columns in "
                                  "width %d: %.*s",
                                  H, L, S, mode, view, cols, width, (int)n, p);
                            free(b.p), free(w);
                            return;
                        }
                        if (mode != MHA_VIZ_TERM_COLOR && strchr(p, '\x1b') &&
                            strchr(p, '\x1b') < p + n) {
                            FAILF("escape sequence outside colour mode");
                            free(b.p), free(w);
                            return;
                        }
                        if (mode == MHA_VIZ_TERM_ASCII)
                            for (size_t i = 0; i < n; i++)
                                if ((unsigned char)p[i] >= 0x80) {
                                    FAILF("non-ASCII byte in ASCII mode: %.*s", (int)n, p);
                                    free(b.p), free(w);
                                    return;
                                }
                        p += n + (nl ? 1 : 0);
                    }
                    if (S > 150 && !strstr(b.p, "downsampled")) {
                        FAILF("S=%d in width %d without a downsampling note", S, width);
                        free(b.p), free(w);
                        return;
                    }
                    free(b.p);
                }
        free(w);
    }
}

/* ---- wide characters: an independent display-width rule ---------------------------------
 * The terminal columns a code point takes, written out here from the rule in mha_viz.h (not
 * shared with the library): 2 for the East Asian Wide and Fullwidth ranges and the emoji
 * blocks, 0 for combining marks and zero-width joiners, 1 for the rest. */
static int tw_cp(unsigned long cp) {
    if ((cp >= 0x300 && cp <= 0x36F) || (cp >= 0x1AB0 && cp <= 0x1AFF) ||
        (cp >= 0x1DC0 && cp <= 0x1DFF) || (cp >= 0x20D0 && cp <= 0x20FF) ||
        (cp >= 0xFE20 && cp <= 0xFE2F) || (cp >= 0x200B && cp <= 0x200F) || cp == 0xFE0F)
        return 0;
    if ((cp >= 0x1100 && cp <= 0x115F) || (cp >= 0x2E80 && cp <= 0x303E) ||
        (cp >= 0x3041 && cp <= 0x33FF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
        (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0xA000 && cp <= 0xA4CF) ||
        (cp >= 0xAC00 && cp <= 0xD7A3) || (cp >= 0xF900 && cp <= 0xFAFF) ||
        (cp >= 0xFE30 && cp <= 0xFE4F) || (cp >= 0xFF00 && cp <= 0xFF60) ||
        (cp >= 0xFFE0 && cp <= 0xFFE6) || (cp >= 0x1F300 && cp <= 0x1F64F) ||
        (cp >= 0x1F900 && cp <= 0x1F9FF) || (cp >= 0x20000 && cp <= 0x2FFFD) ||
        (cp >= 0x30000 && cp <= 0x3FFFD))
        return 2;
    return 1;
}

/* Decodes one code point of s[0 .. n) into *cp; returns its length, or 0 for a broken
 * sequence (a character split by a cut shows up here). */
static size_t tw_decode(const unsigned char *s, size_t n, unsigned long *cp) {
    size_t len = s[0] < 0x80 ? 1 : s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC0 ? 2 : 0;
    if (!len || len > n) return 0;
    unsigned long c = len == 1 ? s[0] : s[0] & (0x7F >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        c = c << 6 | (s[i] & 0x3F);
    }
    *cp = c;
    return len;
}

/* Display width of the line s[0 .. n), skipping ESC [ ... m sequences; -1 for broken UTF-8. */
static int text_width(const char *s, size_t n) {
    int cols = 0;
    for (size_t i = 0; i < n;) {
        if (s[i] == '\x1b') {
            while (i < n && s[i] != 'm') i++;
            i++;
            continue;
        }
        unsigned long cp;
        size_t len = tw_decode((const unsigned char *)s + i, n - i, &cp);
        if (!len) return -1;
        cols += tw_cp(cp);
        i += len;
    }
    return cols;
}

/* Labels mixing ASCII, CJK, Hangul, fullwidth forms, combining marks, zero-width joiners and
 * emoji, some longer than any gutter. */
static const char *const wide_toks[] = {
    "the",
    "\xe7\x8c\xab", /* 猫 */
    "\xf0\x9f\x90\xb1"
    "cat",          /* 🐱cat */
    "cafe\xcc\x81", /* café, combining */
    "\xe6\x9d\xb1\xe4\xba\xac\xe3\x82\xbf\xe3\x83\xaf\xe3\x83\xbc\xe3\x81\xae\xe5\xa4\x9c"
    "\xe6\x99\xaf\xe3\x81\x8c\xe3\x81\x8d\xe3\x82\x8c\xe3\x81\x84", /* 東京タワーの夜景がきれい */
    "\xed\x95\x9c\xea\xb5\xad\xec\x96\xb4",                         /* 한국어 */
    "\xef\xbd\x86\xef\xbd\x95\xef\xbd\x8c\xef\xbd\x8c",             /* ｆｕｌｌ */
    "a\xe2\x80\x8b"
    "b",                                                                        /* a ZWSP b */
    "\xe2\x9d\xa4\xef\xb8\x8f",                                                 /* ❤ + VS16 */
    "\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7", /* 👨‍👩‍👧 */
    "\xcc\x81x",                                                                /* leading mark */
    "e\xcc\x81\xcc\x82\xe4\xb8\xad",                                            /* é̂中 */
    "\xf0\xa0\x80\x80\xf0\xa0\x80\x81", /* U+20000 U+20001 */
    "x\xe4\xb8\xad\xe6\x96\x87\xe5\xad\x97\xe7\xac\xa6\xe6\xb5\x8b\xe8\xaf\x95\xe6\xa0\x87"
    "\xe7\xad\xbe\xe5\xbe\x88\xe9\x95\xbf", /* x中文字符测试标签很长 */
    "\xf0\x9f\xa4\x96 bot",                 /* 🤖 bot */
};
#define N_WIDE (sizeof wide_toks / sizeof wide_toks[0])

/* n labels cycling through wide_toks, starting at `first`. */
static const char **wide_labels(int n, int first) {
    const char **t = malloc(sizeof *t * (size_t)n);
    for (int i = 0; i < n; i++) t[i] = wide_toks[(size_t)(i + first) % N_WIDE];
    return t;
}

/* Checks every line of out: well-formed UTF-8 and at most width columns. */
static int lines_fit(const char *out, int width, const char *what) {
    for (const char *p = out; *p;) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        int cols = text_width(p, n);
        if (cols < 0 || cols > width) {
            FAILF("%s: a line of %d columns (-1: broken UTF-8) in width %d: %.*s\nall:\n%s", what,
                  cols, width, (int)n, p, out);
            return 0;
        }
        p += n + (nl ? 1 : 0);
    }
    return 1;
}

TEST(terminal_fits_width_wide_chars) {
    /* self-attention, the long-label case of the CLI report, cross-attention whose keys fall
     * back to one column per key at small widths, and a downsampled one */
    static const int sizes[][4] = {{2, 6, 6, 0}, {3, 30, 30, 0}, {2, 7, 45, 1}, {1, 40, 200, 1}};
    /* 注意力ヘッド 0 とても長いタイトルですよね, h + combining acute + "1 😀", 헤드 2 */
    static const char *const htitles[3] = {
        "\xe6\xb3\xa8\xe6\x84\x8f\xe5\x8a\x9b\xe3\x83\x98\xe3\x83\x83\xe3\x83\x89 0 "
        "\xe3\x81\xa8\xe3\x81\xa6\xe3\x82\x82\xe9\x95\xb7\xe3\x81\x84\xe3\x82\xbf\xe3\x82\xa4"
        "\xe3\x83\x88\xe3\x83\xab\xe3\x81\xa7\xe3\x81\x99\xe3\x82\x88\xe3\x81\xad",
        "h\xcc\x81"
        "1 \xf0\x9f\x98\x80",
        "\xed\x97\xa4\xeb\x93\x9c 2"};
    char title[512] = "";
    for (int i = 0; i < 12; i++) /* a long title without spaces: wrapped by width alone */
        strcat(title, "\xe6\xa0\x87\xe9\xa2\x98\xe5\xbe\x88\xe9\x95\xbf\xf0\x9f\x8e\x89");
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int H = sizes[s][0], L = sizes[s][1], S = sizes[s][2], cross = sizes[s][3];
        float *w = malloc(sizeof(float) * (size_t)(H * L * S));
        for (int e = 0; e < H * L * S; e++) w[e] = (float)((e * 7919) % 101) / 100.0f;
        const char **qt = wide_labels(L, 0), **kt = wide_labels(S, 5);
        for (int mode = 0; mode < 3; mode++)
            for (int width = 40; width <= 160; width++)
                for (int view = 0; view < 3; view++) {
                    mha_viz_opts o = mha_viz_opts_default();
                    o.view = (mha_viz_view)view, o.head = H - 1;
                    o.term_mode = (mha_viz_term_mode)mode, o.width = width;
                    o.query_tokens = qt;
                    if (cross) o.key_tokens = kt;
                    o.head_titles = htitles;
                    if (width % 3 == 0) o.title = title;
                    buf b = buf_new();
                    mha_status st = mha_viz_term(NULL, w, H, L, S, &o, buf_write, &b);
                    char what[128];
                    snprintf(what, sizeof what, "H=%d L=%d S=%d mode %d view %d", H, L, S, mode,
                             view);
                    int ok = st == MHA_OK;
                    if (!ok) FAILF("%s width %d: %s", what, width, mha_last_errmsg());
                    else ok = lines_fit(b.p, width, what);
                    if (ok && mode == MHA_VIZ_TERM_ASCII)
                        for (const char *p = b.p; *p && ok; p++)
                            if ((unsigned char)*p >= 0x80) {
                                FAILF("%s: non-ASCII byte in ASCII mode:\n%s", what, b.p);
                                ok = 0;
                            }
                    free(b.p);
                    if (!ok) {
                        free(w), free(qt), free(kt);
                        return;
                    }
                }
        free(w), free(qt), free(kt);
    }
}

/* Byte length of the character cell at s: one code point of width >= 1 and the zero-width
 * ones after it (leading zero-width ones join the first). */
static size_t tw_cell(const char *s, int *wd) {
    size_t i = 0;
    int base = 0;
    *wd = 0;
    while (s[i]) {
        unsigned long cp;
        size_t len = tw_decode((const unsigned char *)s + i, strlen(s + i), &cp);
        int x = tw_cp(cp);
        if (x && base) break;
        if (x) base = 1, *wd = x;
        i += len;
    }
    return i;
}

/* The key labels below the axis stay in their cells: with one view and f = 1, line r under
 * the axis holds, at column G + 3 + cw * j, the r-th cell of key label j (a wide cell in a
 * one-column key: the label stops with "…"; a label of more than 8 cells: "…" on line 8),
 * and nothing straddles a key's columns. */
TEST(vertical_wide_key_labels_align) {
    static const int sizes[][2] = {{7, 7}, {5, 30}, {4, 45}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int L = sizes[s][0], S = sizes[s][1];
        float *w = malloc(sizeof(float) * (size_t)(L * S));
        for (int e = 0; e < L * S; e++) w[e] = (float)((e * 31) % 17) / 16.0f;
        const char **qt = wide_labels(L, 3), **kt = wide_labels(S, 0);
        int seen_cw[3] = {0, 0, 0};
        for (int mode = 0; mode < 3; mode += 2) /* Unicode and colour (ASCII has no wide) */
            for (int width = 40; width <= 160; width++) {
                mha_viz_opts o = mha_viz_opts_default();
                o.term_mode = (mha_viz_term_mode)mode, o.width = width;
                o.query_tokens = qt, o.key_tokens = kt;
                buf b = buf_new();
                ASSERT_OK(NULL, mha_viz_term(NULL, w, 1, L, S, &o, buf_write, &b));
                if (strstr(b.p, "downsampled")) { /* no key labels then */
                    free(b.p);
                    continue;
                }
                /* the axis line: G + 1 spaces, "└", then cw * S + 1 "─" */
                char *ax = strstr(b.p, "\xe2\x94\x94");
                ASSERT_TRUE(ax != NULL);
                const char *bol = ax;
                while (bol > b.p && bol[-1] != '\n') bol--;
                int G = (int)(ax - bol) - 1; /* the axis line starts with G + 1 spaces */
                int dashes = 0;
                for (const char *p = ax + 3; !strncmp(p, "\xe2\x94\x80", 3); p += 3) dashes++;
                ASSERT_TRUE((dashes - 1) % S == 0);
                int cw = (dashes - 1) / S;
                ASSERT_TRUE(cw == 1 || cw == 2);
                seen_cw[cw] = 1;
                const char *p = strchr(ax, '\n') + 1;
                for (int r = 0;; r++) {
                    const char *nl = strchr(p, '\n');
                    size_t n = (size_t)(nl - p);
                    char row[2048];
                    ASSERT_TRUE(n < sizeof row);
                    memcpy(row, p, n), row[n] = 0;
                    /* the "Key" title line ends the labels */
                    const char *q = row;
                    while (*q == ' ') q++;
                    if (!strcmp(q, "Key")) {
                        ASSERT_TRUE(r > 0);
                        break;
                    }
                    ASSERT_TRUE(r < 8);
                    for (int c = 0; c < G + 3; c++) ASSERT_TRUE(row[c] == ' ');
                    q = row + G + 3;
                    for (int j = 0; j < S; j++) {
                        /* expected: the r-th cell of label j, "…" or blank */
                        const char *t = kt[j];
                        int wd = 0, k = 0, stop = 0;
                        size_t len = 0;
                        for (; *t; k++) {
                            len = tw_cell(t, &wd);
                            if (wd > cw) stop = 1;
                            if (k == r || stop) break;
                            t += len;
                        }
                        /* the 8th line of a label with more cells: the cut's mark */
                        if (r == 7 && k == r && *t && !stop && t[len]) stop = 1;
                        char want[64];
                        int want_w;
                        if (stop && k == r) strcpy(want, "\xe2\x80\xa6"), want_w = 1;
                        else if (k == r && *t && !stop)
                            memcpy(want, t, len), want[len] = 0, want_w = wd;
                        else want[0] = 0, want_w = 0;
                        for (int x = want_w; x < cw; x++) strcat(want, " ");
                        size_t wl = strlen(want), have = strlen(q);
                        /* trailing blanks of the row were trimmed */
                        int match = have >= wl ? !strncmp(q, want, wl) : !strncmp(q, want, have);
                        for (size_t x = have; match && x < wl; x++) match = want[x] == ' ';
                        if (!match) {
                            FAILF("width %d cw %d: label row %d, key %d: expected \"%s\" at "
                                  "\"%s\"\n%s",
                                  width, cw, r, j, want, q, b.p);
                            free(b.p), free(w), free(qt), free(kt);
                            return;
                        }
                        q += have >= wl ? wl : have;
                    }
                    ASSERT_TRUE(*q == 0);
                    p = nl + 1;
                }
                free(b.p);
            }
        if (S >= 30) ASSERT_TRUE(seen_cw[1] && seen_cw[2]); /* both cell widths were tested */
        free(w), free(qt), free(kt);
    }
}

/* Vertical key labels get 8 lines: a longer label shows 7 of its characters and the cut's
 * mark (as the row labels: "~" in ASCII, "…" else); one of exactly 8 shows whole. */
TEST(vertical_key_labels_mark_a_cut) {
    const char *keys[3] = {"abcdefghij", "ABCDEFGH", "xy"};
    float w[2 * 3];
    for (int e = 0; e < 6; e++) w[e] = (float)e / 5;
    for (int mode = 0; mode < 2; mode++) {
        const char *mark = mode == MHA_VIZ_TERM_ASCII ? "~" : "\xe2\x80\xa6";
        mha_viz_opts o = mha_viz_opts_default();
        o.term_mode = (mha_viz_term_mode)mode, o.width = 80;
        o.query_tokens = (const char *const[]){"q0", "q1"}, o.key_tokens = keys;
        buf b = buf_new();
        ASSERT_OK(NULL, mha_viz_term(NULL, w, 1, 2, 3, &o, buf_write, &b));
        /* the label lines, read down key 0's and key 1's columns (two columns per key) */
        const char *ax = strstr(b.p, mode == MHA_VIZ_TERM_ASCII ? "+-" : "\xe2\x94\x94");
        ASSERT_TRUE(ax != NULL);
        const char *bol = ax;
        while (bol > b.p && bol[-1] != '\n') bol--;
        const size_t at = (size_t)(ax - bol) + 2; /* G + 1 spaces, the corner, a space */
        char col0[64] = "", col1[64] = "";
        const char *p = strchr(ax, '\n') + 1;
        for (int r = 0; r < 8; r++) {
            const char *nl = strchr(p, '\n');
            ASSERT_TRUE(nl && (size_t)(nl - p) > at);
            const char *c = p + at;
            size_t n0 = 1;
            while (((unsigned char)c[n0] & 0xC0) == 0x80) n0++; /* the mark is 3 bytes */
            strncat(col0, c, n0);
            strncat(col1, c + n0 + 1, 1);
            p = nl + 1;
        }
        char want0[64];
        snprintf(want0, sizeof want0, "abcdefg%s", mark);
        if (strcmp(col0, want0) || strcmp(col1, "ABCDEFGH"))
            FAILF("mode %d: key labels read \"%s\" and \"%s\", expected \"%s\" and "
                  "\"ABCDEFGH\"\n%s",
                  mode, col0, col1, want0, b.p);
        ASSERT_STR_CONTAINS(p, "Key"); /* the line after the 8 label lines */
        free(b.p);
    }
}

/* A small CJK case, byte-exact (reviewed in a terminal): self-attention, every head. */
TEST(golden_wide_chars) {
    float w2[2 * TL * TL];
    fixture_two_heads(w2);
    const char *cjk[TL] = {
        "\xe6\x88\x91",                             /* 我 */
        "\xe5\x96\x9c\xe6\xac\xa2",                 /* 喜欢 */
        "\xe5\x90\x83",                             /* 吃 */
        "\xe5\xaf\xbf\xe5\x8f\xb8\xf0\x9f\x8d\xa3", /* 寿司🍣 */
        "cafe\xcc\x81",                             /* café */
        "\xe3\x81\x97\xe3\x82\x87\xe3\x81\x86\xe3\x82\x86\xe3\x83\xa9\xe3\x83\xbc\xe3\x83\xa1"
        "\xe3\x83\xb3\xe3\x81\xa8\xe9\xa4\x83\xe5\xad\x90"}; /* しょうゆラーメンと餃子 */
    const char *ht[2] = {"\xe5\xa4\xb4 0", "\xe5\xa4\xb4 1"}; /* 头 0, 头 1 */
    mha_viz_opts o = mha_viz_opts_default();
    o.view = MHA_VIZ_ALL, o.query_tokens = cjk, o.head_titles = ht, o.width = 60;
    o.title = "\xe6\xb3\xa8\xe6\x84\x8f\xe5\x8a\x9b (attention)"; /* 注意力 */
    buf b = buf_new();
    ASSERT_OK(NULL, mha_viz_term(NULL, w2, 2, TL, TL, &o, buf_write, &b));
    int ok = lines_fit(b.p, 60, "golden") && golden("unicode_all_cjk_w60.txt", &b);
    free(b.p);
    if (!ok) return;
    /* one column per key: the wide key labels stop with a marker */
    float *band = malloc(sizeof(float) * 30 * 30);
    fixture_band(band, 30);
    const char **kt = wide_labels(30, 0);
    o = mha_viz_opts_default();
    o.query_tokens = kt, o.width = 60;
    b = buf_new();
    ASSERT_OK(NULL, mha_viz_term(NULL, band, 1, 30, 30, &o, buf_write, &b));
    ok = lines_fit(b.p, 60, "golden") && golden("unicode_band30_wide_w60.txt", &b);
    free(b.p), free(band), free(kt);
}

TEST(labels_are_cleaned) {
    float w[4] = {1, 0, 0, 1};
    const char *bad[2] = {"a\tb\x1b[31m", "\xff\xfe\xe2\x96\x88z"};
    mha_viz_opts o = mha_viz_opts_default();
    o.query_tokens = bad;
    o.term_mode = MHA_VIZ_TERM_ASCII;
    buf b = buf_new();
    ASSERT_OK(NULL, mha_viz_term(NULL, w, 1, 2, 2, &o, buf_write, &b));
    ASSERT_TRUE(strchr(b.p, '\x1b') == NULL && strchr(b.p, '\t') == NULL);
    ASSERT_STR_CONTAINS(b.p, "a?b?[31m");
    ASSERT_STR_CONTAINS(b.p, "???z");
    free(b.p);
    o.term_mode = MHA_VIZ_TERM_UNICODE;
    b = buf_new();
    ASSERT_OK(NULL, mha_viz_term(NULL, w, 1, 2, 2, &o, buf_write, &b));
    ASSERT_STR_CONTAINS(b.p, "??\xe2\x96\x88z");
    free(b.p);
}

/* key_positions: with L == S the keys take the query tokens unless it is set (cross-attention
 * whose keys have no labels: positions). */
TEST(key_positions_keep_the_query_tokens_off_the_keys) {
    float w[4] = {1, 0, 0, 1};
    const char *q[2] = {"qa", "qb"};
    mha_viz_opts o = mha_viz_opts_default();
    o.query_tokens = q;
    o.term_mode = MHA_VIZ_TERM_ASCII;
    for (int kp = 0; kp < 2; kp++) {
        o.key_positions = kp;
        buf b = buf_new();
        ASSERT_OK(NULL, mha_viz_term(NULL, w, 1, 2, 2, &o, buf_write, &b));
        ASSERT_STR_CONTAINS(b.p, "qb |");
        ASSERT_EQ(strstr(b.p, "Key Position") != NULL, kp);
        ASSERT_EQ(strstr(b.p, "q q\n") != NULL, !kp); /* key labels run down, a letter a line */
        free(b.p);
    }
}

static int count(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

TEST(svg_cells_and_escaping) {
    float w2[2 * TL * TL];
    fixture_two_heads(w2);
    const char *evil[TL] = {"<b>", "a&b", "\"q\"", "it's", "]]>", "ok"};
    mha_viz_opts o = mha_viz_opts_default();
    o.view = MHA_VIZ_ALL;
    o.query_tokens = evil;
    o.title = "a <title> & more";
    buf b = buf_new();
    ASSERT_OK(NULL, mha_viz_svg(NULL, w2, 2, TL, TL, &o, buf_write, &b));
    ASSERT_EQ(count(b.p, "class=\"cell\""), 2 * TL * TL);
    ASSERT_TRUE(strstr(b.p, "<b>") == NULL && strstr(b.p, "a&b") == NULL);
    ASSERT_STR_CONTAINS(b.p, "&lt;b&gt;");
    ASSERT_STR_CONTAINS(b.p, "a &lt;title&gt; &amp; more");
    /* weight 0.75 is the largest: the top colour; 0 is the bottom one */
    ASSERT_STR_CONTAINS(b.p, "fill=\"#fde725\"><title>query 0 \"&lt;b&gt;\" \xe2\x86\x92 key 0");
    free(b.p);
    o.view = MHA_VIZ_AVERAGE;
    b = buf_new();
    ASSERT_OK(NULL, mha_viz_svg(NULL, w2, 2, TL, TL, &o, buf_write, &b));
    ASSERT_EQ(count(b.p, "class=\"cell\""), TL * TL);
    ASSERT_STR_CONTAINS(b.p, "average of 2 heads");
    free(b.p);
}

/* The tooltips the header quotes (mha_viz.h, mha_viz_svg: "query 2 \"cat\" → key 1 ...") are
 * what the file holds, quotes included: the documented line is read from the header. */
TEST(svg_tooltip_as_documented) {
    char path[1024], doc[640] = "";
    snprintf(path, sizeof path, "%s/../include/mha_viz.h", MHA_TEST_DIR);
    FILE *f = fopen(path, "r");
    ASSERT_TRUE(f != NULL);
    char line[512];
    while (fgets(line, sizeof line, f))
        if (strstr(line, "query 2 ") && strstr(line, "0.4123")) {
            const char *p = line;
            while (*p == ' ' || *p == '*') p++;
            snprintf(doc, sizeof doc, "<title>%s", p);
            doc[strcspn(doc, "\n")] = 0;
            break;
        }
    fclose(f);
    ASSERT_TRUE(doc[0] != 0);
    strcat(doc, "</title>");
    const char *t[3] = {"a", "the", "cat"};
    float w[9] = {0.5f, 0.5f, 0, 0.2f, 0.8f, 0, 0.3f, 0.4123f, 0.2877f};
    mha_viz_opts o = mha_viz_opts_default();
    o.query_tokens = t;
    buf b = buf_new();
    ASSERT_OK(NULL, mha_viz_svg(NULL, w, 1, 3, 3, &o, buf_write, &b));
    ASSERT_STR_CONTAINS(b.p, doc);
    free(b.p);
}

/* A weight below 1e-4 reads in 4 significant digits (a long sequence's weights, about 1/S, read
 * 0.0000 at 4 decimals); 0 and larger ones keep the 4 decimals. */
TEST(svg_tooltip_small_weights) {
    float w[4] = {3.217e-6f, 0, 0.25f, 1 - 3.217e-6f - 0.25f};
    mha_viz_opts o = mha_viz_opts_default();
    buf b = buf_new();
    ASSERT_OK(NULL, mha_viz_svg(NULL, w, 1, 2, 2, &o, buf_write, &b));
    ASSERT_STR_CONTAINS(b.p, "query 0 \xe2\x86\x92 key 0: 3.217e-06</title>");
    ASSERT_STR_CONTAINS(b.p, "query 0 \xe2\x86\x92 key 1: 0.0000</title>");
    ASSERT_STR_CONTAINS(b.p, "query 1 \xe2\x86\x92 key 0: 0.2500</title>");
    free(b.p);
}

TEST(colormap) {
    uint8_t c[3];
    mha_viz_color(0, c);
    ASSERT_TRUE(c[0] == 68 && c[1] == 1 && c[2] == 84);
    mha_viz_color(1, c);
    ASSERT_TRUE(c[0] == 253 && c[1] == 231 && c[2] == 37);
    mha_viz_color(2, c);
    ASSERT_TRUE(c[0] == 253);
    mha_viz_color(NAN, c);
    ASSERT_TRUE(c[0] == 68);
    mha_viz_color(0.5f, c);
    ASSERT_TRUE(c[0] == 33 && c[1] == 145 && c[2] == 140);
}

#if defined(MHA_TEST_PNG)
typedef struct {
    const unsigned char *p;
    size_t n, off;
} png_src;
static void png_read_cb(png_structp png, png_bytep out, png_size_t n) {
    png_src *s = png_get_io_ptr(png);
    if (s->off + n > s->n) png_error(png, "short read");
    memcpy(out, s->p + s->off, n);
    s->off += n;
}
/* Decodes an 8-bit RGB PNG into *rgb (malloc). Returns 0 on success. */
static int png_decode(const buf *b, int *w, int *h, unsigned char **rgb) {
    png_src src = {(const unsigned char *)b->p, b->n, 0};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    unsigned char *volatile img = NULL;
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        free(img);
        return -1;
    }
    png_set_read_fn(png, &src, png_read_cb);
    png_read_info(png, info);
    if (png_get_color_type(png, info) != PNG_COLOR_TYPE_RGB || png_get_bit_depth(png, info) != 8)
        png_error(png, "not 8-bit rgb");
    *w = (int)png_get_image_width(png, info), *h = (int)png_get_image_height(png, info);
    img = malloc((size_t)*w * (size_t)*h * 3);
    for (int y = 0; y < *h; y++) png_read_row(png, img + (size_t)y * (size_t)*w * 3, NULL);
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    *rgb = img;
    return 0;
}
#endif

#if defined(MHA_TEST_PNG)
/* The PNG layout of mha_viz.h, written out again here: the grid origin of panel p and the
 * image size, from the characters of the longest query label q, key label k, panel name t and
 * title (0: none), and of the three colour-bar values. */
typedef struct {
    int c, cols, rows, q, k, t, pw, ph, top, iw, ih;
} png_geom;
static png_geom png_geom_make(int n, int L, int S, int c, int q, int k, int t, int title,
                              int vals) {
    png_geom g = {c, 1, 0, q, k, t, 0, 0, 0, 0, 0};
    while (g.cols * g.cols < n) g.cols++;
    g.rows = (n + g.cols - 1) / g.cols;
    g.pw = 6 * q + 4 + (S * c > 6 * t ? S * c : 6 * t);
    g.ph = 13 + L * c + 4 + 6 * k;
    g.top = 8 + (title ? 26 : 0);
    int content = g.cols * g.pw + (g.cols - 1) * 12, inner = content;
    if (12 * title > inner) inner = 12 * title;
    if (6 * vals + 24 > inner) inner = 6 * vals + 24;
    g.iw = 16 + inner;
    g.ih = g.top + g.rows * g.ph + (g.rows - 1) * 12 + 8 + 12 + 3 + 9 + 8;
    return g;
}
static int png_gx(const png_geom *g, int p) {
    return 8 + (p % g->cols) * (g->pw + 12) + 6 * g->q + 4;
}
static int png_gy(const png_geom *g, int p) { return g->top + (p / g->cols) * (g->ph + 12) + 13; }

/* A decoded image and the bounding box of the pixels where two images differ. */
typedef struct {
    int w, h;
    unsigned char *rgb;
} image;
typedef struct {
    int x0, y0, x1, y1; /* [x0, x1) x [y0, y1); empty when x0 >= x1 */
} box;
static box diff_box(const image *a, const image *b) {
    box d = {a->w, a->h, 0, 0};
    for (int y = 0; y < a->h; y++)
        for (int x = 0; x < a->w; x++)
            if (memcmp(a->rgb + ((size_t)y * a->w + x) * 3, b->rgb + ((size_t)y * b->w + x) * 3,
                       3)) {
                if (x < d.x0) d.x0 = x;
                if (y < d.y0) d.y0 = y;
                if (x + 1 > d.x1) d.x1 = x + 1;
                if (y + 1 > d.y1) d.y1 = y + 1;
            }
    return d;
}
static int box_inside(box d, box r) {
    return d.x0 < d.x1 && d.x0 >= r.x0 && d.y0 >= r.y0 && d.x1 <= r.x1 && d.y1 <= r.y1;
}

/* Whether the image shows s in the font at (x, y) (the top-left corner of its text box, as
 * mha__viz_text places it): every glyph pixel dark, every other pixel of the box white. */
static int reads(const image *im, int x, int y, const char *s, int scale, int upward) {
    int n = (int)strlen(s);
    for (int k = 0; k < n; k++)
        for (int gy = 0; gy < MHA__VIZ_GLYPH_H * scale; gy++)
            for (int gx = 0; gx < MHA__VIZ_GLYPH_ADV * scale; gx++) {
                int on = gx / scale < MHA__VIZ_GLYPH_W &&
                         mha__viz_glyph_ink((unsigned char)s[k], gx / scale, gy / scale);
                int px = upward ? x + gy : x + k * MHA__VIZ_GLYPH_ADV * scale + gx;
                int py =
                    upward ? y + n * MHA__VIZ_GLYPH_ADV - 1 - k * MHA__VIZ_GLYPH_ADV - gx : y + gy;
                if (px < 0 || py < 0 || px >= im->w || py >= im->h) return 0;
                const unsigned char *c = im->rgb + ((size_t)py * im->w + px) * 3;
                if (on ? c[0] >= 128 : (c[0] != 255 || c[1] != 255 || c[2] != 255)) return 0;
            }
    return 1;
}

/* Renders w with o as a PNG and decodes it; 0 on success (else the test has failed). */
static int png_render(const float *w, int H, int L, int S, const mha_viz_opts *o, image *im) {
    buf b = buf_new();
    mha_status st = mha_viz_png(NULL, w, H, L, S, o, buf_write, &b);
    if (st != MHA_OK) {
        FAILF("mha_viz_png: %s", mha_last_errmsg());
        free(b.p);
        return -1;
    }
    int rc = png_decode(&b, &im->w, &im->h, &im->rgb);
    if (rc) FAILF("the PNG does not decode");
    free(b.p);
    return rc;
}
#endif

#if defined(MHA_TEST_PNG)
static int png_same_pixels(const char *png, size_t n, const buf *b) {
    buf a = {(char *)png, n, n, -1, 0};
    image x, y;
    if (png_decode(&a, &x.w, &x.h, &x.rgb)) return 0;
    if (png_decode(b, &y.w, &y.h, &y.rgb)) {
        free(x.rgb);
        return 0;
    }
    int same = x.w == y.w && x.h == y.h && !memcmp(x.rgb, y.rgb, (size_t)x.w * x.h * 3);
    free(x.rgb), free(y.rgb);
    return same;
}
#else
static int png_same_pixels(const char *png, size_t n, const buf *b) {
    (void)png, (void)n, (void)b;
    return 0;
}
#endif

TEST(png_geometry_and_colours) {
    float w2[2 * TL * TL];
    fixture_two_heads(w2);
    mha_viz_opts o = mha_viz_opts_default();
    o.view = MHA_VIZ_ALL;
    o.cell_px = 5;
    buf b = buf_new();
    mha_status st = mha_viz_png(NULL, w2, 2, TL, TL, &o, buf_write, &b);
#if !defined(MHA_TEST_PNG)
    ASSERT_EQ(st, MHA_ERR_UNSUPPORTED);
    ASSERT_STR_CONTAINS(mha_last_errmsg(), "png support not built (libpng not found)");
    free(b.p);
#else
    ASSERT_OK(NULL, st);
    free(b.p);
    image im;
    if (png_render(w2, 2, TL, TL, &o, &im)) return;
    /* 2 panels: cols = 2, rows = 1; rows labelled every 5 cells of 5 px ("0", "5"); names
     * "head 0", "head 1" (6 characters: wider than the 30 px of cells); values "0 0.5 1" */
    png_geom g = png_geom_make(2, TL, TL, 5, 1, 1, 6, 0, 5);
    ASSERT_EQ(im.w, g.iw);
    ASSERT_EQ(im.h, g.ih);
    /* auto scale 0 .. 1 (head 1 row 0 is one-hot) */
    static const struct {
        int p, i, j;
        float t;
    } probes[] = {
        {0, 0, 0, 0.75f}, {0, 2, 3, 0.05f}, {1, 0, 0, 1.0f}, {1, 0, 5, 0.0f}, {1, 3, 1, 0.25f}};
    for (size_t k = 0; k < sizeof probes / sizeof probes[0]; k++) {
        for (int dy = 0; dy < 5; dy++)
            for (int dx = 0; dx < 5; dx++) {
                int x = png_gx(&g, probes[k].p) + probes[k].j * 5 + dx;
                int y = png_gy(&g, probes[k].p) + probes[k].i * 5 + dy;
                uint8_t want[3];
                mha_viz_color(probes[k].t, want);
                const unsigned char *px = im.rgb + ((size_t)y * (size_t)im.w + (size_t)x) * 3;
                if (memcmp(px, want, 3) != 0) {
                    FAILF("panel %d cell (%d, %d) pixel (%d, %d): got #%02x%02x%02x, expected "
                          "#%02x%02x%02x",
                          probes[k].p, probes[k].i, probes[k].j, x, y, px[0], px[1], px[2], want[0],
                          want[1], want[2]);
                    free(im.rgb);
                    return;
                }
            }
    }
    /* the margin is white; the colour bar runs from the bottom colour to the top one */
    ASSERT_TRUE(im.rgb[0] == 255 && im.rgb[1] == 255 && im.rgb[2] == 255);
    uint8_t lo[3], hi[3];
    mha_viz_color(0, lo), mha_viz_color(1, hi);
    const unsigned char *bar = im.rgb + ((size_t)(g.ih - 32) * (size_t)im.w + 8) * 3;
    ASSERT_TRUE(memcmp(bar, lo, 3) == 0 && memcmp(bar + (size_t)(g.iw - 17) * 3, hi, 3) == 0);
    free(im.rgb);
    /* too large: the message gives the largest cell size that fits */
    o.cell_px = 64;
    float *big = calloc(300 * 300, sizeof(float)); /* 17000 x 2 too */
    b = buf_new();
    ASSERT_EQ(mha_viz_png(NULL, big, 1, 300, 300, &o, buf_write, &b), MHA_ERR_NOMEM);
    ASSERT_STR_CONTAINS(mha_last_errmsg(), "expected at most 16384 on a side (use a smaller "
                                           "opts.cell_px: 5");
    int fit = atoi(strstr(mha_last_errmsg(), "cell_px: ") + 9);
    o.cell_px = fit;
    ASSERT_OK(NULL, mha_viz_png(NULL, big, 1, 300, 300, &o, buf_write, &b));
    free(b.p), b = buf_new();
    o.cell_px = fit + 1;
    ASSERT_EQ(mha_viz_png(NULL, big, 1, 300, 300, &o, buf_write, &b), MHA_ERR_NOMEM);
    /* automatic: 9000 queries take 1 pixel each (2, the automatic floor, would not fit) */
    o.cell_px = 0;
    free(b.p), b = buf_new();
    ASSERT_OK(NULL, mha_viz_png(NULL, big, 1, 9000, 2, &o, buf_write, &b));
    ASSERT_EQ(png_decode(&b, &im.w, &im.h, &im.rgb), 0);
    ASSERT_TRUE(im.h > 9000 && im.h <= 16384);
    free(im.rgb);
    /* nothing fits: 17000 queries */
    free(b.p), b = buf_new();
    ASSERT_EQ(mha_viz_png(NULL, big, 1, 17000, 2, &o, buf_write, &b), MHA_ERR_NOMEM);
    ASSERT_STR_CONTAINS(mha_last_errmsg(), "at 1 pixel per cell, expected at most 16384 on a side "
                                           "(draw fewer heads or positions)");
    o.cell_px = 8; /* asked for: no size fits either (it said "1 fits") */
    ASSERT_EQ(mha_viz_png(NULL, big, 1, 17000, 2, &o, buf_write, &b), MHA_ERR_NOMEM);
    ASSERT_STR_CONTAINS(mha_last_errmsg(), "at 1 pixel per cell");
    free(big), free(b.p);
#endif
}

/* The font: every printable character but the space has ink, in its 5 x 9 box, and no two
 * characters look the same. */
TEST(font_is_complete) {
    static unsigned char bits[96][MHA__VIZ_GLYPH_H];
    for (int ch = 32; ch < 128; ch++) {
        int ink = 0;
        for (int y = 0; y < MHA__VIZ_GLYPH_H; y++) {
            bits[ch - 32][y] = 0;
            for (int x = 0; x < MHA__VIZ_GLYPH_W; x++)
                if (mha__viz_glyph_ink(ch, x, y))
                    bits[ch - 32][y] |= (unsigned char)(1 << x), ink++;
        }
        if ((ink == 0) != (ch == ' ')) {
            FAILF("glyph %d ('%c'): %d ink pixels", ch, ch, ink);
            return;
        }
        for (int o = 32; o < ch; o++)
            if (!memcmp(bits[o - 32], bits[ch - 32], MHA__VIZ_GLYPH_H)) {
                FAILF("'%c' and '%c' have the same glyph", o, ch);
                return;
            }
    }
    /* bytes outside the font draw as '?' */
    for (int y = 0; y < MHA__VIZ_GLYPH_H; y++)
        for (int x = 0; x < MHA__VIZ_GLYPH_W; x++)
            ASSERT_EQ(mha__viz_glyph_ink(200, x, y), mha__viz_glyph_ink('?', x, y));
    char cut[8];
    ASSERT_EQ(mha__viz_cut(cut, "abcdefgh", 5), 5);
    ASSERT_TRUE(!strcmp(cut, "abcd"
                             "\x7f"));
    ASSERT_EQ(mha__viz_cut(cut, "abcde", 5), 5);
    ASSERT_TRUE(!strcmp(cut, "abcde"));
}

/* Each kind of text is drawn where mha_viz.h says, and reads as it should: two renderings that
 * differ only in one text differ only inside that text's box, and the box shows the text. */
TEST(png_labels_are_drawn) {
#if !defined(MHA_TEST_PNG)
    ASSERT_TRUE(1); /* without libpng: png_geometry_and_colours checks MHA_ERR_UNSUPPORTED */
#else
    float w2[2 * TL * TL];
    fixture_two_heads(w2);
    image a, b;
    /* the title, twice as large, at (8, 8) */
    mha_viz_opts o = mha_viz_opts_default();
    o.view = MHA_VIZ_ALL, o.cell_px = 12, o.query_tokens = toks;
    o.title = "attention AAAA";
    if (png_render(w2, 2, TL, TL, &o, &a)) return;
    o.title = "attention BBBB";
    if (png_render(w2, 2, TL, TL, &o, &b)) return;
    png_geom g = png_geom_make(2, TL, TL, 12, 3, 3, 6, 14, 5);
    ASSERT_EQ(a.w, g.iw);
    ASSERT_EQ(a.h, g.ih);
    ASSERT_TRUE(box_inside(diff_box(&a, &b), (box){8 + 12 * 10, 8, 8 + 12 * 14, 8 + 18}));
    ASSERT_TRUE(reads(&a, 8, 8, "attention AAAA", 2, 0) && reads(&b, 8, 8, "attention BBBB", 2, 0));
    /* panel names: "head 0", "head 1" by default (as in every renderer), above the cells */
    for (int p = 0; p < 2; p++) {
        char name[16];
        snprintf(name, sizeof name, "head %d", p);
        ASSERT_TRUE(reads(&a, png_gx(&g, p), png_gy(&g, p) - 13, name, 1, 0));
    }
    free(a.rgb);
    a = b; /* titled "attention BBBB" */
    const char *names[2] = {"head 0", "head X"};
    o.head_titles = names;
    if (png_render(w2, 2, TL, TL, &o, &b)) return;
    int nx = png_gx(&g, 1), ny = png_gy(&g, 1) - 13;
    ASSERT_TRUE(box_inside(diff_box(&a, &b), (box){nx + 30, ny, nx + 36, ny + 9}));
    free(b.rgb);
    o.head_titles = NULL;
    /* query labels, right-aligned 4 px left of the cells and centred on their rows; key
     * labels written upwards from 4 px under the cells (self-attention: the same tokens) */
    for (int p = 0; p < 2; p++)
        for (int i = 0; i < TL; i++) {
            int n = (int)strlen(toks[i]);
            ASSERT_TRUE(
                reads(&a, png_gx(&g, p) - 4 - 6 * n, png_gy(&g, p) + i * 12 + 2, toks[i], 1, 0));
            ASSERT_TRUE(
                reads(&a, png_gx(&g, p) + i * 12 + 2, png_gy(&g, p) + TL * 12 + 4, toks[i], 1, 1));
        }
    const char *qt[TL] = {"the", "cat", "sit", "on", "the", "mat"};
    const char *kt[TL] = {"the", "cat", "sat", "on", "the", "mat"};
    o.view = MHA_VIZ_HEAD, o.title = NULL, o.query_tokens = toks, o.key_tokens = kt;
    free(a.rgb);
    if (png_render(w2, 2, TL, TL, &o, &a)) return;
    o.query_tokens = qt;
    if (png_render(w2, 2, TL, TL, &o, &b)) return;
    g = png_geom_make(1, TL, TL, 12, 3, 3, 6, 0, 5);
    int gx = png_gx(&g, 0), gy = png_gy(&g, 0);
    ASSERT_TRUE(box_inside(diff_box(&a, &b), (box){8, gy + 2 * 12 + 2, gx - 4, gy + 3 * 12 + 2}));
    ASSERT_TRUE(reads(&b, gx - 4 - 18, gy + 2 * 12 + 2, "sit", 1, 0));
    free(b.rgb);
    o.query_tokens = toks, o.key_tokens = qt;
    if (png_render(w2, 2, TL, TL, &o, &b)) return;
    int ky = gy + TL * 12 + 4;
    ASSERT_TRUE(
        box_inside(diff_box(&a, &b), (box){gx + 2 * 12 + 2, ky, gx + 2 * 12 + 11, ky + 18}));
    ASSERT_TRUE(reads(&b, gx + 2 * 12 + 2, ky, "sit", 1, 1));
    free(a.rgb), free(b.rgb);
    /* the colour bar's values: weights above vmax all draw the top colour, so only the values
     * change from 0, 0.5, 1 to 0, 1, 2 */
    float big[2 * TL * TL];
    for (int e = 0; e < 2 * TL * TL; e++) big[e] = 5;
    o = mha_viz_opts_default();
    o.cell_px = 12, o.vmin = 0, o.vmax = 1;
    if (png_render(big, 2, TL, TL, &o, &a)) return;
    o.vmax = 2;
    if (png_render(big, 2, TL, TL, &o, &b)) return;
    g = png_geom_make(1, TL, TL, 12, 1, 1, 6, 0, 5);
    int vy = g.ih - 32 + 15;
    ASSERT_TRUE(box_inside(diff_box(&a, &b), (box){8, vy, g.iw - 8, vy + 9}));
    int mid = 8 + (g.iw - 16 - 18) / 2;
    ASSERT_TRUE(reads(&a, 8, vy, "0", 1, 0) && reads(&a, mid, vy, "0.5", 1, 0) &&
                reads(&a, g.iw - 8 - 6, vy, "1", 1, 0));
    ASSERT_TRUE(reads(&b, g.iw - 8 - 6, vy, "2", 1, 0));
    free(a.rgb), free(b.rgb);
#endif
}

/* PNG renderings, byte for byte, against tests/golden/viz/png_*.png (made by this test with
 * MHA_UPDATE_GOLDEN=1; tests/golden/viz/README.md): every label kind, both label steps, long
 * and non-ASCII labels, cross-attention and an explicit scale. */
TEST(golden_png) {
#if !defined(MHA_TEST_PNG)
    ASSERT_TRUE(1); /* without libpng: png_geometry_and_colours checks MHA_ERR_UNSUPPORTED */
#else
    float w2[2 * TL * TL], band[100 * 100], cross[2 * 4 * 9];
    fixture_two_heads(w2);
    fixture_band(band, 100);
    for (int e = 0; e < 2 * 4 * 9; e++) cross[e] = (float)((e * 37) % 23) / 11.0f - 0.5f;
    const char *q4[4] = {"Wo", "ist", "die", "Katze?"};
    const char *k9[9] = {"where",        "is",  "the", "cat", "(hiding)", "under_the_kitchen_table",
                         "\xe7\x8c\xab", "now", "?"};
    mha_viz_opts o[3];
    for (int c = 0; c < 3; c++) o[c] = mha_viz_opts_default();
    o[0].view = MHA_VIZ_ALL, o[0].query_tokens = toks, o[0].title = "two heads on six tokens";
    o[2].view = MHA_VIZ_AVERAGE, o[2].query_tokens = q4, o[2].key_tokens = k9;
    o[2].vmin = -0.5f, o[2].vmax = 1.5f, o[2].cell_px = 14, o[2].title = "cross-attention";
    static const char *const names[3] = {"png_all_tokens_title.png", "png_band100_positions.png",
                                         "png_cross_average_long_labels.png"};
    for (int c = 0; c < 3; c++) {
        buf b = buf_new();
        mha_status st = c == 0   ? mha_viz_png(NULL, w2, 2, TL, TL, &o[c], buf_write, &b)
                        : c == 1 ? mha_viz_png(NULL, band, 1, 100, 100, &o[c], buf_write, &b)
                                 : mha_viz_png(NULL, cross, 2, 4, 9, &o[c], buf_write, &b);
        ASSERT_OK(NULL, st);
        int ok = golden(names[c], &b);
        free(b.p);
        if (!ok) return;
    }
#endif
}

/* Long labels are cut with the mark and the margins grow with the labels; non-ASCII text is
 * drawn as '?'. */
TEST(png_long_labels) {
#if !defined(MHA_TEST_PNG)
    ASSERT_TRUE(1);
#else
    float w2[2 * TL * TL];
    fixture_two_heads(w2);
    const char *t[TL] = {"a", "bb", "a_label_of_twenty_chars", "caf\xc3\xa9", "e", "f"};
    mha_viz_opts o = mha_viz_opts_default();
    o.cell_px = 12, o.query_tokens = t;
    image im;
    if (png_render(w2, 2, TL, TL, &o, &im)) return;
    png_geom g = png_geom_make(1, TL, TL, 12, 16, 16, 6, 0, 5);
    ASSERT_EQ(im.w, g.iw);
    ASSERT_EQ(im.h, g.ih);
    int gx = png_gx(&g, 0), gy = png_gy(&g, 0);
    ASSERT_TRUE(reads(&im, gx - 4 - 96, gy + 2 * 12 + 2, "a_label_of_twen\x7f", 1, 0));
    ASSERT_TRUE(reads(&im, gx - 4 - 24, gy + 3 * 12 + 2, "caf?", 1, 0));
    ASSERT_TRUE(reads(&im, gx + 2 * 12 + 2, gy + TL * 12 + 4, "a_label_of_twen\x7f", 1, 1));
    free(im.rgb);
#endif
}

TEST(html_is_self_contained) {
    float w2[2 * TL * TL];
    fixture_two_heads(w2);
    const char *evil[TL] = {"</script><script>alert(1)</script>", "a&b", "\"", "\\", "<!--", "mat"};
    mha_viz_opts o = mha_viz_opts_default();
    o.query_tokens = evil;
    buf b = buf_new();
    ASSERT_OK(NULL, mha_viz_html(NULL, w2, 2, TL, TL, &o, buf_write, &b));
    ASSERT_EQ(count(b.p, "<script"), 2);
    ASSERT_EQ(count(b.p, "</script>"), 2);
    ASSERT_EQ(count(b.p, "<!--"), 0);
    ASSERT_TRUE(strstr(b.p, " src=") == NULL && strstr(b.p, "<link") == NULL);
    ASSERT_TRUE(strstr(b.p, "https:") == NULL && strstr(b.p, "url(") == NULL);
    /* the only http: is the SVG namespace name, which is never fetched */
    ASSERT_EQ(count(b.p, "http:"), 1);
    ASSERT_STR_CONTAINS(b.p, "\"\\u003c/script\\u003e\\u003cscript\\u003ealert(1)");
    ASSERT_STR_CONTAINS(b.p, "\"H\":2,\"L\":6,\"S\":6");
    free(b.p);
}

/* The page's size is bounded (mha_viz.h): beyond 256 cells a side or 2^20 values over all
 * heads it draws the means of f x f blocks, says so, and stores only those; up to there every
 * weight, with no note. */
TEST(html_large_views_are_blocks) {
    static const struct {
        int H, L, S, f;
    } cases[] = {{16, 256, 256, 1},  {17, 256, 256, 2}, {2, 257, 100, 2}, {1, 1000, 3, 4},
                 {4, 1000, 1000, 4}, {64, 256, 256, 2}, {1, 3, 4096, 16}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int H = cases[c].H, L = cases[c].L, S = cases[c].S, f = cases[c].f;
        const size_t n = (size_t)H * (size_t)L * (size_t)S;
        float *w = malloc(n * sizeof *w);
        ASSERT_TRUE(w != NULL);
        for (size_t e = 0; e < n; e++) w[e] = (float)(e % 1009) / 1009.0f;
        buf b = buf_new();
        ASSERT_OK(NULL, mha_viz_html(NULL, w, H, L, S, NULL, buf_write, &b));
        const int R = (L + f - 1) / f, C = (S + f - 1) / f;
        char want[128];
        snprintf(want, sizeof want, "\"H\":%d,\"L\":%d,\"S\":%d,\"f\":%d,\"R\":%d,\"C\":%d,", H, L,
                 S, f, R, C);
        ASSERT_STR_CONTAINS(b.p, want);
        if (f > 1) {
            snprintf(want, sizeof want,
                     "each cell is the mean of a %dx%d block (%d x %d weights as %d x %d cells)", f,
                     f, L, S, R, C);
            ASSERT_STR_CONTAINS(b.p, want);
        } else {
            ASSERT_TRUE(strstr(b.p, "id=\"downsample\"") == NULL);
        }
        /* the stored values: H x R x C of them */
        const char *d = strstr(b.p, ",\"w\":[[");
        ASSERT_TRUE(d != NULL);
        const char *end = strstr(d, "]]}");
        ASSERT_TRUE(end != NULL);
        size_t values = 1;
        for (const char *p = d + 7; p < end; p++) values += *p == ',';
        ASSERT_EQ(values, (size_t)H * (size_t)R * (size_t)C);
        /* the bound: 12 bytes a value, 2^20 values, plus this page's labels and the rest */
        ASSERT_TRUE(b.n <= 12u * ((size_t)1 << 20) + 64 * 1024 + 150 * (size_t)H);
        free(b.p);
        free(w);
    }
}

TEST(stats) {
    float w[2 * 3 * 4] = {0};
    for (int i = 0; i < 3; i++) {
        w[i * 4 + 2] = 1;                                      /* head 0: all look at key 2 */
        for (int j = 0; j < 4; j++) w[12 + i * 4 + j] = 0.25f; /* head 1: uniform */
    }
    mha_viz_stats s[2];
    ASSERT_OK(NULL, mha_viz_head_stats(NULL, w, 2, 3, 4, s));
    ASSERT_TRUE(fabs(s[0].entropy) < 1e-12 && s[0].top_key == 2 && s[0].top_key_mean == 1.0);
    ASSERT_TRUE(fabs(s[1].entropy - 2.0) < 1e-9 && fabs(s[1].max_entropy - 2.0) < 1e-12);
    ASSERT_TRUE(s[1].top_key == 0 && s[1].max_weight == 0.25);
    float got[2] = {(float)s[0].entropy, (float)s[1].entropy};
    double want[2] = {0.0, 2.0};
    ASSERT_NEAR_TENSOR("entropy", got, want, 2, 1e-6, 1e-6);
    ASSERT_EQ(mha_viz_head_stats(NULL, w, 2, 3, 4, NULL), MHA_ERR_INVALID_ARG);
}

TEST(file_wrappers) {
    float w2[2 * TL * TL];
    fixture_two_heads(w2);
    char path[1024];
    snprintf(path, sizeof path, "%s/viz_test_out.svg", MHA_BUILD_DIR);
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    ASSERT_OK(ctx, mha_viz_svg_file(ctx, w2, 2, TL, TL, NULL, path));
    buf b = buf_new();
    ASSERT_OK(ctx, mha_viz_svg(ctx, w2, 2, TL, TL, NULL, buf_write, &b));
    size_t n;
    char *got = read_all(path, &n);
    ASSERT_TRUE(got && n == b.n && memcmp(got, b.p, n) == 0);
    free(got), free(b.p);
    remove(path);
    ASSERT_EQ(mha_viz_html_file(ctx, w2, 2, TL, TL, NULL, "/nonexistent-dir/x.html"), MHA_ERR_IO);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_viz_html_file");
    ASSERT_EQ(mha_viz_term_file(ctx, w2, 2, TL, TL, NULL, NULL), MHA_ERR_INVALID_ARG);
    /* a failed render leaves no file */
    snprintf(path, sizeof path, "%s/viz_test_fail.txt", MHA_BUILD_DIR);
    mha_viz_opts o = mha_viz_opts_default();
    o.head = 7;
    ASSERT_EQ(mha_viz_term_file(ctx, w2, 2, TL, TL, &o, path), MHA_ERR_INVALID_ARG);
    FILE *f = fopen(path, "rb");
    ASSERT_TRUE(f == NULL);
    mha_ctx_free(ctx);
}

TEST(errors) {
    float w[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    buf b = buf_new();
    mha_viz_opts o = mha_viz_opts_default();
    ASSERT_EQ(mha_viz_term(ctx, NULL, 1, 2, 2, &o, buf_write, &b), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_viz_term: w: got NULL");
    ASSERT_EQ(mha_viz_svg(ctx, w, 0, 2, 2, &o, buf_write, &b), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "got H=0 L=2 S=2");
    ASSERT_EQ(mha_viz_html(ctx, w, 1, 2, 2, &o, NULL, &b), MHA_ERR_INVALID_ARG);
    o.head = 1;
    ASSERT_EQ(mha_viz_term(ctx, w, 1, 2, 2, &o, buf_write, &b), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "opts.head: got 1, expected 0 <= head < 1");
    o.head = 0;
    o.width = 20;
    ASSERT_EQ(mha_viz_term(ctx, w, 1, 2, 2, &o, buf_write, &b), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "opts.width: got 20");
    o.width = 0;
    o.term_mode = (mha_viz_term_mode)9;
    ASSERT_EQ(mha_viz_term(ctx, w, 1, 2, 2, &o, buf_write, &b), MHA_ERR_INVALID_ARG);
    o.term_mode = MHA_VIZ_TERM_UNICODE;
    o.view = (mha_viz_view)5;
    ASSERT_EQ(mha_viz_svg(ctx, w, 1, 2, 2, &o, buf_write, &b), MHA_ERR_INVALID_ARG);
    o.view = MHA_VIZ_HEAD;
    o.cell_px = 65;
    ASSERT_EQ(mha_viz_svg(ctx, w, 1, 2, 2, &o, buf_write, &b), MHA_ERR_INVALID_ARG);
    ASSERT_EQ(mha_viz_png(ctx, w, 1, 2, 2, &o, buf_write, &b), MHA_ERR_INVALID_ARG);
    o.cell_px = 0;
    o.vmax = NAN;
    ASSERT_EQ(mha_viz_term(ctx, w, 1, 2, 2, &o, buf_write, &b), MHA_ERR_INVALID_ARG);
    o.vmax = 0;
    const char *one_null[2] = {"a", NULL};
    o.query_tokens = one_null;
    ASSERT_EQ(mha_viz_svg(ctx, w, 1, 2, 2, &o, buf_write, &b), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "opts.query_tokens[1]: got NULL");
    o.query_tokens = NULL;
    w[3] = NAN;
    ASSERT_EQ(mha_viz_html(ctx, w, 1, 2, 2, &o, buf_write, &b), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "w[3]: got nan, expected a finite weight");
    w[3] = 0.5f;
    /* the callback fails: MHA_ERR_IO, for every writer */
    b.fail_after = 0;
    ASSERT_EQ(mha_viz_term(ctx, w, 1, 2, 2, &o, buf_write, &b), MHA_ERR_IO);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "write callback failed");
    ASSERT_EQ(mha_viz_svg(ctx, w, 1, 2, 2, &o, buf_write, &b), MHA_ERR_IO);
    ASSERT_EQ(mha_viz_html(ctx, w, 1, 2, 2, &o, buf_write, &b), MHA_ERR_IO);
#if defined(MHA_TEST_PNG)
    ASSERT_EQ(mha_viz_png(ctx, w, 1, 2, 2, &o, buf_write, &b), MHA_ERR_IO);
#endif
    /* a successful call clears the message */
    b.fail_after = -1;
    ASSERT_OK(ctx, mha_viz_term(ctx, w, 1, 2, 2, &o, buf_write, &b));
    ASSERT_TRUE(mha_ctx_errmsg(ctx)[0] == 0);
    free(b.p);
    mha_ctx_free(ctx);
}

/* Heads are numbered from 0 in every renderer's default names ("head 0" .. "head H-1"). The
 * PNG's names are read back in png_labels_are_drawn. */
TEST(heads_numbered_from_zero) {
    float w2[2 * TL * TL];
    fixture_two_heads(w2);
    mha_viz_opts o = mha_viz_opts_default();
    o.view = MHA_VIZ_ALL;
    for (int r = 0; r < 3; r++) {
        buf b = buf_new();
        ASSERT_OK(NULL, r == 0   ? mha_viz_term(NULL, w2, 2, TL, TL, &o, buf_write, &b)
                        : r == 1 ? mha_viz_svg(NULL, w2, 2, TL, TL, &o, buf_write, &b)
                                 : mha_viz_html(NULL, w2, 2, TL, TL, &o, buf_write, &b));
        int ok = strstr(b.p, "head 0") && strstr(b.p, "head 1") && !strstr(b.p, "head 2");
        if (!ok) FAILF("renderer %d does not name the heads head 0, head 1:\n%s", r, b.p);
        free(b.p);
        if (!ok) return;
    }
}

/* Allocation failure at every point: a clean MHA_ERR_NOMEM, never a crash. */
TEST(allocation_failures) {
    float w2[2 * TL * TL];
    fixture_two_heads(w2);
    mha_viz_opts o = mha_viz_opts_default();
    o.view = MHA_VIZ_ALL;
    o.query_tokens = toks;
    o.title = "allocated too";
#if defined(MHA_TEST_PNG)
    const int renderers = 5;
#else
    const int renderers = 4;
#endif
    for (int r = 0; r < renderers; r++) {
        int ok = 0;
        for (long n = 0; n < 400 && !ok; n++) {
            buf b = buf_new();
            mha__fault_after(n);
            mha_status st = r == 0   ? mha_viz_term(NULL, w2, 2, TL, TL, &o, buf_write, &b)
                            : r == 1 ? mha_viz_svg(NULL, w2, 2, TL, TL, &o, buf_write, &b)
                            : r == 2 ? mha_viz_html(NULL, w2, 2, TL, TL, &o, buf_write, &b)
                            : r == 3
                                ? mha_viz_head_stats(NULL, w2, 2, TL, TL, (mha_viz_stats[2]){{0}})
                                : mha_viz_png(NULL, w2, 2, TL, TL, &o, buf_write, &b);
            mha__fault_after(-1);
            free(b.p);
            if (st == MHA_OK) ok = 1;
            else if (st != MHA_ERR_NOMEM) {
                FAILF("renderer %d, fault after %ld: %s (%s)", r, n, mha_status_str(st),
                      mha_last_errmsg());
                return;
            }
        }
        ASSERT_TRUE(ok);
    }
}

static int write_sample(const char *kind, const char *path) {
    float w2[2 * TL * TL];
    fixture_two_heads(w2);
    const char *t[TL] = {"the", "cat", "sat", "on", "</script>", "mat"};
    mha_viz_opts o = mha_viz_opts_default();
    o.view = MHA_VIZ_ALL;
    o.query_tokens = t;
    o.title = "sample: two heads on a six-token sentence";
    mha_status st = !strcmp(kind, "--write-html") ? mha_viz_html_file(NULL, w2, 2, TL, TL, &o, path)
                                                  : mha_viz_svg_file(NULL, w2, 2, TL, TL, &o, path);
    if (st != MHA_OK) {
        fprintf(stderr, "test_viz: %s\n", mha_last_errmsg());
        return 2;
    }
    return 0;
}

/* "--write-html-large N H F": the page of an N x N view of H heads (the first selected) with
 * w[h, i, j] = ((7i + 13j + 5h) mod 101) / 100 * (1 + j / N), rounded to float: what
 * tests/browser/test_html_large.py recomputes to check the page's block means. */
static int write_large(const char *n_arg, const char *h_arg, const char *path) {
    const long n = strtol(n_arg, NULL, 10), H = strtol(h_arg, NULL, 10);
    if (n < 1 || n > 8192 || H < 1 || H > 8) {
        fprintf(stderr, "test_viz: --write-html-large N H F: N in 1..8192, H in 1..8\n");
        return 1;
    }
    float *w = malloc(sizeof *w * (size_t)(H * n * n));
    if (!w) {
        fprintf(stderr, "test_viz: out of memory\n");
        return 2;
    }
    for (long h = 0; h < H; h++)
        for (long i = 0; i < n; i++)
            for (long j = 0; j < n; j++)
                w[(h * n + i) * n + j] = (float)((double)((7 * i + 13 * j + 5 * h) % 101) / 100.0 *
                                                 (1.0 + (double)j / (double)n));
    mha_viz_opts o = mha_viz_opts_default();
    o.title = "large view";
    mha_status st = mha_viz_html_file(NULL, w, H, n, n, &o, path);
    free(w);
    if (st != MHA_OK) {
        fprintf(stderr, "test_viz: %s\n", mha_last_errmsg());
        return 2;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3) return write_sample(argv[1], argv[2]);
    if (argc == 5 && !strcmp(argv[1], "--write-html-large"))
        return write_large(argv[2], argv[3], argv[4]);
    RUN(golden_terminal);
    RUN(terminal_fits_width);
    RUN(terminal_fits_width_wide_chars);
    RUN(vertical_wide_key_labels_align);
    RUN(vertical_key_labels_mark_a_cut);
    RUN(golden_wide_chars);
    RUN(labels_are_cleaned);
    RUN(key_positions_keep_the_query_tokens_off_the_keys);
    RUN(svg_cells_and_escaping);
    RUN(svg_tooltip_as_documented);
    RUN(svg_tooltip_small_weights);
    RUN(colormap);
    RUN(png_geometry_and_colours);
    RUN(font_is_complete);
    RUN(png_labels_are_drawn);
    RUN(png_long_labels);
    RUN(golden_png);
    RUN(html_is_self_contained);
    RUN(html_large_views_are_blocks);
    RUN(stats);
    RUN(file_wrappers);
    RUN(errors);
    RUN(heads_numbered_from_zero);
    RUN(allocation_failures);
    return harness_report();
}
