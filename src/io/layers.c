/* layers.c - one attention layer found in a collection of any layout (a whole model's
 * state_dict) and returned in nn.MultiheadAttention's names and layout, float32: mha_st_layer.
 *
 * A layout is a set of names relative to a layer prefix; a layer is a prefix under which every
 * weight of one layout exists. Candidates are found from an anchor name (the q or packed qkv
 * weight), checked for the rest, then one is picked by the caller's prefix. Biases may be
 * partly present (Whisper's k_proj has none): the missing ones are zeros, which is the same
 * layer numerically. Only then are the shapes and dtypes validated and the tensors converted
 * (bf16, f16, f64 to float32; GPT-2's Conv1D [in, out] transposed to [out, in]). */
#include "io_internal.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Names relative to the prefix. Packed q, k, v (qkv_w) are stacked rows [3E, E] (Conv1D:
 * columns [E, 3E]); otherwise w[0..2] are q, k, v. Biases: packed qkv_b [3E] or b[0..2]. */
typedef struct {
    const char *layout; /* the "layout" metadata value */
    const char *qkv_w, *w[3];
    const char *qkv_b, *b[3];
    const char *o_w, *o_b;
    int conv1d; /* weights stored [in, out] (GPT-2's Conv1D), transposed on the way */
} layout;

/* One layout a row. */
/* clang-format off */
static const layout layouts[] = {
    /* layout, packed qkv weight, q/k/v weights, packed qkv bias, q/k/v biases, out, Conv1D */
    {"nn.MultiheadAttention", "in_proj_weight", {0}, "in_proj_bias", {0},
     "out_proj.weight", "out_proj.bias", 0},
    {"nn.MultiheadAttention", NULL, {"q_proj_weight", "k_proj_weight", "v_proj_weight"},
     "in_proj_bias", {0}, "out_proj.weight", "out_proj.bias", 0},
    {"seed", NULL, {"W_q.weight", "W_k.weight", "W_v.weight"},
     NULL, {"W_q.bias", "W_k.bias", "W_v.bias"}, "W_o.weight", "W_o.bias", 0},
    {"huggingface", NULL, {"q_proj.weight", "k_proj.weight", "v_proj.weight"},
     NULL, {"q_proj.bias", "k_proj.bias", "v_proj.bias"}, "out_proj.weight", "out_proj.bias", 0},
    {"huggingface", NULL, {"q_proj.weight", "k_proj.weight", "v_proj.weight"},
     NULL, {"q_proj.bias", "k_proj.bias", "v_proj.bias"}, "o_proj.weight", "o_proj.bias", 0},
    {"bert", NULL, {"self.query.weight", "self.key.weight", "self.value.weight"},
     NULL, {"self.query.bias", "self.key.bias", "self.value.bias"},
     "output.dense.weight", "output.dense.bias", 0},
    {"bert", NULL, {"query.weight", "key.weight", "value.weight"},
     NULL, {"query.bias", "key.bias", "value.bias"}, "output.dense.weight", "output.dense.bias", 0},
    {"gpt2", "c_attn.weight", {0}, "c_attn.bias", {0}, "c_proj.weight", "c_proj.bias", 1},
};
/* clang-format on */
#define NLAYOUTS ((int)(sizeof layouts / sizeof layouts[0]))

static const char LOOKED_FOR[] =
    "looked for, under any prefix: in_proj_weight or q/k/v_proj_weight with out_proj.weight "
    "(nn.MultiheadAttention); W_q/W_k/W_v/W_o.weight (seed); q_proj/k_proj/v_proj with "
    "out_proj or o_proj (huggingface); self.query/key/value with output.dense (bert); c_attn "
    "with c_proj (gpt2)";

/* A layer found: names[i][0 .. plen) is its prefix. missing: NULL when every weight is there,
 * else the first weight that is not (a partial layer, reported only when nothing better). */
typedef struct {
    const char *pfx;
    size_t plen;
    const layout *lay;
    const char *missing;
} cand;

/* What a search shares: the collection, a buffer for prefix + name, the candidates. */
typedef struct {
    mha_ctx *ctx;
    const char *fn, *where;
    const mha_st *st;
    char *name; /* room for the longest name in st + 64 */
    cand *c;
    int n;
} search;

/* The tensor prefix + rel (rel NULL: none). */
static const mha_array *find(search *s, const char *pfx, size_t plen, const char *rel) {
    if (!rel) return NULL;
    memcpy(s->name, pfx, plen);
    strcpy(s->name + plen, rel);
    return mha_st_find(s->st, s->name);
}

/* Natural order: digit runs compare as numbers (layers.2. before layers.10.). */
static int cmp_natural(const char *a, size_t na, const char *b, size_t nb) {
    size_t i = 0, j = 0;
    while (i < na && j < nb) {
        if (a[i] >= '0' && a[i] <= '9' && b[j] >= '0' && b[j] <= '9') {
            size_t i0 = i, j0 = j;
            while (i0 < na && a[i0] == '0') i0++;
            while (j0 < nb && b[j0] == '0') j0++;
            size_t i1 = i0, j1 = j0;
            while (i1 < na && a[i1] >= '0' && a[i1] <= '9') i1++;
            while (j1 < nb && b[j1] >= '0' && b[j1] <= '9') j1++;
            if (i1 - i0 != j1 - j0) return i1 - i0 < j1 - j0 ? -1 : 1;
            int c = memcmp(a + i0, b + j0, i1 - i0);
            if (c) return c;
            i = i1;
            j = j1;
            continue;
        }
        if (a[i] != b[j]) return (unsigned char)a[i] < (unsigned char)b[j] ? -1 : 1;
        i++;
        j++;
    }
    return (i < na) - (j < nb);
}

/* 1 if a and b have the same prefix. */
static int same_prefix(const cand *a, const cand *b) {
    return a->plen == b->plen && memcmp(a->pfx, b->pfx, a->plen) == 0;
}

/* By prefix (naturally, then bytewise: "01" and "1" differ); at one prefix the complete layer
 * first, then the first layout. */
static int cmp_cand(const void *x, const void *y) {
    const cand *a = x, *b = y;
    int c = cmp_natural(a->pfx, a->plen, b->pfx, b->plen);
    if (!c && !same_prefix(a, b)) {
        c = memcmp(a->pfx, b->pfx, a->plen < b->plen ? a->plen : b->plen);
        if (!c) c = a->plen < b->plen ? -1 : 1;
    }
    if (c) return c;
    if (!a->missing != !b->missing) return a->missing ? 1 : -1;
    return a->lay < b->lay ? -1 : a->lay > b->lay;
}

/* Every prefix under which a layout's anchor exists, once each (sorted). */
static mha_status find_candidates(search *s) {
    const int count = mha_st_count(s->st);
    size_t longest = 0;
    for (int i = 0; i < count; i++) {
        size_t l = strlen(mha_st_name(s->st, i));
        if (l > longest) longest = l;
    }
    s->name = mha__malloc(longest + 64);
    s->c = mha__calloc((size_t)count * NLAYOUTS + 1, sizeof *s->c);
    if (!s->name || !s->c) return mha__err(s->ctx, MHA_ERR_NOMEM, "%s: out of memory", s->fn);
    for (int i = 0; i < count; i++) {
        const char *nm = mha_st_name(s->st, i);
        const size_t len = strlen(nm);
        for (int k = 0; k < NLAYOUTS; k++) {
            const layout *L = &layouts[k];
            const char *anchor = L->qkv_w ? L->qkv_w : L->w[0];
            const size_t al = strlen(anchor);
            if (len < al || strcmp(nm + len - al, anchor) != 0) continue;
            const size_t plen = len - al;
            if (plen && nm[plen - 1] != '.') continue; /* "xq_proj.weight" is not "q_proj" */
            cand c = {nm, plen, L, NULL};
            const char *need[3] = {L->w[1], L->w[2], L->o_w}; /* w[1], w[2] NULL if packed */
            for (int r = 0; r < 3 && !c.missing; r++)
                if (need[r] && !find(s, nm, plen, need[r])) c.missing = need[r];
            s->c[s->n++] = c;
        }
    }
    if (s->n) qsort(s->c, (size_t)s->n, sizeof *s->c, cmp_cand);
    int kept = 0; /* one per prefix: the first, complete if any */
    for (int i = 0; i < s->n; i++)
        if (!kept || !same_prefix(&s->c[i], &s->c[kept - 1])) s->c[kept++] = s->c[i];
    s->n = kept;
    return MHA_OK;
}

/* 1 if candidate c's prefix starts with want[0 .. wl). */
static int starts(const cand *c, const char *want, size_t wl) {
    return c->plen >= wl && strncmp(c->pfx, want, wl) == 0;
}

/* 1 if want names c's prefix, with or without its final '.'. */
static int names(const cand *c, const char *want, size_t wl) {
    return starts(c, want, wl) && (c->plen == wl || (c->plen == wl + 1 && c->pfx[wl] == '.'));
}

/* "a., b., c. and 9 more" into buf: the complete candidates whose prefix starts with want[0 ..
 * wl) (and then a '.' when dot), at most 8 and about 200 bytes of names; returns how many there
 * are, *first the first. */
static int list_prefixes(const search *s, const char *want, size_t wl, int dot, char *buf,
                         size_t cap, const cand **first) {
    int n = 0, shown = 0, full = 0;
    size_t used = 0;
    buf[0] = 0;
    for (int i = 0; i < s->n; i++) {
        const cand *c = &s->c[i];
        if (c->missing || !starts(c, want, wl) || (dot && (c->plen <= wl || c->pfx[wl] != '.')))
            continue;
        if (!n++) *first = c;
        if (full || shown == 8 || used > 200) continue;
        int w = c->plen ? snprintf(buf + used, cap - used, "%s%.*s", shown ? ", " : "",
                                   (int)c->plen, c->pfx)
                        : snprintf(buf + used, cap - used, "%s\"\" (no prefix)", shown ? ", " : "");
        if (w < 0 || (size_t)w >= cap - used) { /* a name too long for the rest: show no more */
            buf[used] = 0;
            full = 1;
            continue;
        }
        used += (size_t)w;
        shown++;
    }
    if (n > shown) snprintf(buf + used, cap - used, " and %d more", n - shown);
    return n;
}

/* The error for an incomplete layer: the first weight it lacks. */
static mha_status incomplete(const search *s, const cand *c) {
    const char *anchor = c->lay->qkv_w ? c->lay->qkv_w : c->lay->w[0];
    return mha__err(s->ctx, MHA_ERR_NOT_FOUND,
                    "%s: %.*s%s: missing from %.200s (%.*s%s is there: an incomplete %s layer)",
                    s->fn, (int)c->plen, c->pfx, c->missing, s->where, (int)c->plen, c->pfx, anchor,
                    c->lay->layout);
}

/* The candidate the prefix picks, or an error. In order: the layer the prefix names; the one
 * layer under it as a whole component ("encoder.layers.1" is layer 1, not 10 or 11); an
 * incomplete layer the prefix names that way (an error saying what it lacks, rather than
 * another layer taken); the one layer whose prefix starts with it. NULL or "": the only
 * layer, else the one at the top level. */
static mha_status pick(search *s, const char *prefix, const cand **out) {
    char list[320];
    if (!prefix) prefix = "";
    const size_t pl = strlen(prefix);
    for (int i = 0; pl && i < s->n; i++)
        if (!s->c[i].missing && names(&s->c[i], prefix, pl)) {
            *out = &s->c[i];
            return MHA_OK;
        }
    const int component = pl && prefix[pl - 1] != '.';
    int n = component ? list_prefixes(s, prefix, pl, 1, list, sizeof list, out) : 0;
    if (n == 1) return MHA_OK;
    for (int i = 0; pl && !n && i < s->n; i++) {
        const cand *c = &s->c[i];
        if (c->missing && (names(c, prefix, pl) || (component && starts(c, prefix, pl) &&
                                                    c->plen > pl && c->pfx[pl] == '.')))
            return incomplete(s, c);
    }
    if (!n) n = list_prefixes(s, prefix, pl, 0, list, sizeof list, out);
    if (n == 1) return MHA_OK;
    /* No prefix and a layer at the top level: it is the file's layer, the nested ones are
     * something saved beside it (golden fixtures keep the expected gradients under
     * "expect.grad."). */
    for (int i = 0; n > 1 && !pl && i < s->n; i++)
        if (!s->c[i].missing && s->c[i].plen == 0) {
            *out = &s->c[i];
            return MHA_OK;
        }
    if (n > 1 && pl)
        return mha__err(s->ctx, MHA_ERR_INVALID_ARG,
                        "%s: prefix: got \"%.120s\", expected one of the %d attention layers that "
                        "start with it: %s (give the whole prefix)",
                        s->fn, prefix, n, list);
    if (n > 1)
        return mha__err(
            s->ctx, MHA_ERR_INVALID_ARG,
            "%s: prefix: got none, expected one of the %d attention layers in %.200s: %s "
            "(pick one with --prefix / prefix=)",
            s->fn, n, s->where, list);
    /* Nothing complete matches: an incomplete layer there says what it lacks. */
    for (int i = 0; i < s->n; i++)
        if (s->c[i].missing && starts(&s->c[i], prefix, pl)) return incomplete(s, &s->c[i]);
    const cand *any;
    n = list_prefixes(s, "", 0, 0, list, sizeof list, &any);
    if (!n)
        return mha__err(s->ctx, MHA_ERR_NOT_FOUND, "%s: no attention layer found in %.200s (%s)",
                        s->fn, s->where, LOOKED_FOR);
    return mha__err(
        s->ctx, MHA_ERR_INVALID_ARG,
        "%s: prefix: got \"%.120s\", expected one of the %d attention layers in %.200s: %s", s->fn,
        prefix, n, s->where, list);
}

/* ---- validating and converting the picked layer --------------------------------------------- */

/* Element i of a (a float dtype) as float32: exact for bf16 and f16, rounded for f64. */
static float elem(const mha_array *a, int64_t i) {
    uint32_t bits;
    float f;
    switch (a->dtype) {
    case MHA_DTYPE_F32: return ((const float *)a->data)[i];
    case MHA_DTYPE_F64: return (float)((const double *)a->data)[i];
    case MHA_DTYPE_BF16: /* the top half of a float32 */
        bits = (uint32_t)((const uint16_t *)a->data)[i] << 16;
        break;
    default: { /* MHA_DTYPE_F16: IEEE half, rebiased (15 -> 127) */
        const uint32_t h = ((const uint16_t *)a->data)[i], sign = (h & 0x8000u) << 16;
        const uint32_t e = h >> 10 & 0x1f, m = h & 0x3ff;
        if (e == 0x1f) bits = sign | 0x7f800000u | m << 13; /* inf, nan */
        else if (e) bits = sign | (e + 112) << 23 | m << 13;
        else { /* zero or subnormal: m * 2^-24, exact in float32 */ f = (float)m * 0x1p-24f;
            memcpy(&bits, &f, sizeof bits);
            bits |= sign;
        }
    }
    }
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* A block of a source tensor: dst[r][c] = a[off + r * si + c * sj], r < R, c < C. Serves
 * plain [out, in] weights (si = C, sj = 1), Conv1D [in, out] ones (si = 1, sj = out), packed
 * q/k/v thirds (off) and biases (R = 1). a == NULL: zeros (a missing bias). */
typedef struct {
    const mha_array *a;
    int64_t off, R, C, si, sj;
} block;

static void copy_block(float *dst, const block *b) {
    for (int64_t r = 0; r < b->R; r++)
        for (int64_t c = 0; c < b->C; c++)
            dst[r * b->C + c] = b->a ? elem(b->a, b->off + r * b->si + c * b->sj) : 0.0f;
}

/* The tensors of the picked layer, validated: E, kdim, vdim and a block for each part. */
typedef struct {
    int64_t E, dim[3]; /* dim: q, k, v input sizes (E, kdim, vdim) */
    block w[3], o, b[3], ob;
    int bias; /* any bias present */
} parts;

static mha_status bad_dtype(search *s, const cand *c, const char *rel, const mha_array *a) {
    if (a->dtype == MHA_DTYPE_F32 || a->dtype == MHA_DTYPE_F64 || a->dtype == MHA_DTYPE_F16 ||
        a->dtype == MHA_DTYPE_BF16)
        return MHA_OK;
    return mha__err(s->ctx, MHA_ERR_UNSUPPORTED,
                    "%s: %.*s%s.dtype: got %s, expected float32, bfloat16, float16 or float64 (a "
                    "parameter is converted to float32)",
                    s->fn, (int)c->plen, c->pfx, rel, mha_dtype_name(a->dtype));
}

/* The tensor rel must be there (or be optional: *a NULL) with ndim dims of the sizes want
 * (want[d] < 0: any, recorded into want[d]; why explains the expectation). */
static mha_status get(search *s, const cand *c, const char *rel, int ndim, int64_t *want,
                      const char *why, const mha_array **a) {
    *a = find(s, c->pfx, c->plen, rel);
    if (!*a) return MHA_OK;
    mha_status r = bad_dtype(s, c, rel, *a);
    if (r) return r;
    if ((*a)->ndim != ndim)
        return mha__err(s->ctx, MHA_ERR_SHAPE, "%s: %.*s%s.ndim: got %d, expected %d", s->fn,
                        (int)c->plen, c->pfx, rel, (*a)->ndim, ndim);
    for (int d = 0; d < ndim; d++) {
        const int64_t got = (*a)->shape[d];
        if (want[d] < 0 && got > 0) want[d] = got;
        else if (want[d] < 0 || got != want[d])
            return mha__err(s->ctx, MHA_ERR_SHAPE,
                            "%s: %.*s%s.shape[%d]: got %lld, expected %s%lld%s%s%s", s->fn,
                            (int)c->plen, c->pfx, rel, d, (long long)got, want[d] < 0 ? "> " : "",
                            (long long)(want[d] < 0 ? 0 : want[d]), why ? " (" : "", why ? why : "",
                            why ? ")" : "");
    }
    return MHA_OK;
}

/* The parts of layer c into p, every shape and dtype checked. */
static mha_status gather(search *s, const cand *c, parts *p) {
    const layout *L = c->lay;
    const mha_array *a;
    mha_status r;
    memset(p, 0, sizeof *p);
    static const char *const kv[] = {"bias_k", "bias_v"};
    for (int k = 0; k < 2; k++)
        if (find(s, c->pfx, c->plen, kv[k]))
            return mha__err(s->ctx, MHA_ERR_UNSUPPORTED,
                            "%s: %.*s%s: found in %.200s, expected no %s (a layer made with "
                            "add_bias_kv=True, which mha does not support)",
                            s->fn, (int)c->plen, c->pfx, kv[k], s->where, kv[k]);
    int64_t E;
    if (L->qkv_w) { /* q, k, v stacked: rows [3E, E], or Conv1D columns [E, 3E] */
        int64_t w[2] = {-1, -1};
        if ((r = get(s, c, L->qkv_w, 2, w, NULL, &a))) return r;
        E = w[L->conv1d ? 0 : 1];
        if (w[L->conv1d ? 1 : 0] != 3 * E)
            return mha__err(s->ctx, MHA_ERR_SHAPE,
                            "%s: %.*s%s.shape: got [%lld, %lld], expected %s", s->fn, (int)c->plen,
                            c->pfx, L->qkv_w, (long long)w[0], (long long)w[1],
                            L->conv1d ? "[E, 3E] (Conv1D's [in, out]: q, k, v side by side)"
                                      : "[3E, E] (q, k and v stacked)");
        for (int i = 0; i < 3; i++) {
            p->dim[i] = E;
            p->w[i] =
                L->conv1d ? (block){a, i * E, E, E, 1, 3 * E} : (block){a, i * E * E, E, E, E, 1};
        }
    } else { /* q [E, E], k [E, kdim], v [E, vdim] */
        int64_t q[2] = {-1, -1};
        if ((r = get(s, c, L->w[0], 2, q, NULL, &a))) return r;
        E = q[1];
        if (q[0] != E)
            return mha__err(s->ctx, MHA_ERR_SHAPE,
                            "%s: %.*s%s.shape[0]: got %lld, expected %lld (its shape[1]: the "
                            "query projection maps embed_dim to embed_dim)",
                            s->fn, (int)c->plen, c->pfx, L->w[0], (long long)q[0], (long long)E);
        p->dim[0] = E;
        p->w[0] = (block){a, 0, E, E, E, 1};
        for (int i = 1; i < 3; i++) {
            a = find(s, c->pfx, c->plen, L->w[i]);
            if (a->ndim == 2 && a->shape[0] > 0 && a->shape[0] < E && E % a->shape[0] == 0)
                return mha__err(s->ctx, MHA_ERR_UNSUPPORTED,
                                "%s: %.*s%s.shape[0]: got %lld, expected %lld (grouped-query "
                                "attention: not supported yet)",
                                s->fn, (int)c->plen, c->pfx, L->w[i], (long long)a->shape[0],
                                (long long)E);
            int64_t w[2] = {E, -1};
            if ((r = get(s, c, L->w[i], 2, w, "as many rows as the query projection", &a)))
                return r;
            p->dim[i] = w[1];
            p->w[i] = (block){a, 0, E, w[1], w[1], 1};
        }
    }
    int64_t o[2] = {E, E}, n3[1] = {3 * E}, n1[1] = {E};
    if ((r = get(s, c, L->o_w, 2, o, "[E, E], E from the query projection", &a))) return r;
    assert(a); /* the weights were found with the layer (find_candidates) */
    p->o = L->conv1d ? (block){a, 0, E, E, 1, E} : (block){a, 0, E, E, E, 1};
    if (L->qkv_b) {
        if ((r = get(s, c, L->qkv_b, 1, n3, "3E: q, k and v biases stacked", &a))) return r;
        for (int i = 0; i < 3; i++) p->b[i] = (block){a, i * E, 1, E, 0, 1};
        p->bias |= a != NULL;
    } else {
        for (int i = 0; i < 3; i++) {
            if ((r = get(s, c, L->b[i], 1, n1, NULL, &a))) return r;
            p->b[i] = (block){a, 0, 1, E, 0, 1};
            p->bias |= a != NULL;
        }
    }
    if ((r = get(s, c, L->o_b, 1, n1, NULL, &a))) return r;
    p->ob = (block){a, 0, 1, E, 0, 1};
    p->bias |= a != NULL;
    p->E = E;
    return MHA_OK;
}

/* Adds name [shape] to st: the blocks one after another, converted to float32. */
static mha_status add(search *s, mha_st *st, const char *name, int ndim, const int64_t *shape,
                      const block *b, int nb) {
    mha_array arr;
    mha_status r = mha__array_make(s->ctx, s->fn, MHA_DTYPE_F32, ndim, shape, &arr);
    if (r) return r;
    float *dst = arr.data;
    for (int i = 0; i < nb; i++) {
        copy_block(dst, &b[i]);
        dst += b[i].R * b[i].C;
    }
    return mha__st_adopt(s->ctx, s->fn, st, name, &arr);
}

/* The new collection of layer c, in nn.MultiheadAttention's names, with its metadata. */
static mha_status build(search *s, const cand *c, mha_st **out, mha__layer_dims *dims) {
    parts p;
    mha_status r = gather(s, c, &p);
    if (r) return r;
    const int64_t E = p.E;
    const int packed = p.dim[1] == E && p.dim[2] == E;
    mha_st *st = NULL;
    if ((r = mha_st_create(s->ctx, &st))) return r;
    static const char *const sep[3] = {"q_proj_weight", "k_proj_weight", "v_proj_weight"};
    const int64_t s3[2] = {3 * E, E}, sE[2] = {E, E}, b3[1] = {3 * E};
    if (packed) r = add(s, st, "in_proj_weight", 2, s3, p.w, 3);
    for (int i = 0; i < 3 && !packed && !r; i++) {
        const int64_t sh[2] = {E, p.dim[i]};
        r = add(s, st, sep[i], 2, sh, &p.w[i], 1);
    }
    if (!r) r = add(s, st, "out_proj.weight", 2, sE, &p.o, 1);
    if (!r && p.bias) r = add(s, st, "in_proj_bias", 1, b3, p.b, 3);
    if (!r && p.bias) r = add(s, st, "out_proj.bias", 1, sE, &p.ob, 1);
    const char *heads = mha_st_meta_get(s->st, "num_heads");
    if (!r && heads) r = mha_st_meta_set(s->ctx, st, "num_heads", heads);
    if (!r) r = mha_st_meta_set(s->ctx, st, "layout", c->lay->layout);
    memcpy(s->name, c->pfx, c->plen);
    s->name[c->plen] = 0;
    if (!r) r = mha_st_meta_set(s->ctx, st, "prefix", s->name);
    if (r) {
        mha_st_free(st);
        return r;
    }
    if (dims) {
        dims->embed_dim = E;
        dims->kdim = p.dim[1];
        dims->vdim = p.dim[2];
        dims->bias = p.bias;
    }
    *out = st;
    return MHA_OK;
}

mha_status mha__st_layer(mha_ctx *ctx, const char *fn, const mha_st *st, const char *prefix,
                         const char *where, mha_st **out, mha__layer_dims *dims) {
    search s = {ctx, fn, where ? where : "the file", st, NULL, NULL, 0};
    const cand *c = NULL;
    *out = NULL;
    mha_status r = find_candidates(&s);
    if (!r) r = pick(&s, prefix, &c);
    if (!r) r = build(&s, c, out, dims);
    mha__free(s.name);
    mha__free(s.c);
    return r;
}

mha_status mha_st_layer(mha_ctx *ctx, const mha_st *st, const char *prefix, mha_st **out) {
    mha__clear(ctx);
    if (!out)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_st_layer: out: got NULL, expected a pointer");
    *out = NULL;
    if (!st)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_st_layer: st: got NULL, expected a collection");
    return mha__st_layer(ctx, "mha_st_layer", st, prefix, NULL, out, NULL);
}
