/* test_varlen_paged.c - mha_attn_varlen_paged: the packed queries of a continuous-batching step
 * (sequences decoding one token next to chunks of prompts) against their paged caches.
 * Randomized batches (query rows 0 .. 40 per sequence, 0 .. 700 keys, fewer keys than rows)
 * against a float64 reference, out and lse, on every ISA in float32, bfloat16 and half: both
 * paths (decode and prefill), GQA, MQA and H = Hkv, D != Dv, causal, windows, ALiBi ([H] and
 * [batch, H]), softcap and scale, strided q / out / lse and both pool layouts; each sequence
 * bitwise mha_attn_kvcache_paged on it alone, and 1 and 2 threads bitwise; pages shared by two
 * sequences; every bad argument refused with a message naming it and nothing written; empty
 * batches. Unused pool rows and q's padding hold NaN and unused table entries junk, so that a
 * read the call must not make shows in out. */
#include "harness.h"
#include "kernels/cvt.h"
#include "kernels/kernels.h"

#define TEST_RNG_SEED 0x9E3779B97F4A7C15ull
#include "rng.h"

static size_t esize(mha_dtype dt) { return dt == MHA_DTYPE_F32 ? 4 : 2; }

/* Element i of a buffer of dtype dt = x (rounded to dt), or as float (kernels/cvt.h). */
#define put mha__store_f32
#define get mha__load_f32

typedef struct {
    mha_dtype dt;
    int64_t H, Hkv, D, Dv, page, wl, wr;
    int causal, window, alibi; /* alibi 1: slopes [H], 2: [batch, H] */
    int layout;                /* 1: the pools in FlashAttention's [P, page, Hkv, X + 2] memory */
    int pad;                   /* 1: q, out and lse strided, with padding between rows */
    int no_lse;
    float scale, softcap;
} vcase;

#define MAXSEQ 12

/* One call's arguments; the buffers' element counts (nq ...) include the padding. */
typedef struct {
    int64_t n, Tq, nbt, P, nq, nkp, nvp, nout, nlse;
    int32_t cu[MAXSEQ + 1], sk[MAXSEQ], *bt;
    void *q, *kp, *vp, *out;
    float *lse, *slopes;
    mha_tensor tq, tkp, tvp, tout, tlse;
    mha_mask mask;
    mha_attn_params p;
} vbufs;

static void *buf_new(mha_dtype dt, int64_t n, float v) {
    void *p = malloc((size_t)(n > 0 ? n : 1) * esize(dt));
    for (int64_t i = 0; i < n; i++) put(dt, p, i, v);
    return p;
}

/* A [T, H, X] view (q, out) filled with v: contiguous, or (pad) with 3 elements after each
 * head's X and 5 after each token's row. */
static mha_tensor rows_new(mha_dtype dt, int pad, int64_t T, int64_t H, int64_t X, void **buf,
                           int64_t *n, float v) {
    const int64_t hs = X + (pad ? 3 : 0), ts = H * hs + (pad ? 5 : 0);
    *n = T * ts;
    *buf = buf_new(dt, *n, v);
    const int64_t shape[3] = {T, H, X}, st[3] = {ts, hs, 1};
    return mha_tensor_typed(*buf, dt, 3, shape, st);
}

/* A pool of P pages of rows X wide, [P, Hkv, page, X], every element NaN. */
static mha_tensor pool_new(const vcase *c, int64_t P, int64_t X, void **buf, int64_t *n) {
    const int64_t xs = c->layout ? X + 2 : X;
    *n = P * c->page * c->Hkv * xs;
    *buf = buf_new(c->dt, *n, NAN);
    const int64_t shape[4] = {P, c->Hkv, c->page, X};
    int64_t st[4] = {c->Hkv * c->page * X, c->page * X, X, 1};
    if (c->layout) st[0] = c->page * c->Hkv * xs, st[1] = xs, st[2] = c->Hkv * xs;
    return mha_tensor_typed(*buf, c->dt, 4, shape, st);
}

/* The offset of key / value row j of head kh of sequence s in the pool t. */
static int64_t kv_off(const vbufs *d, const mha_tensor *t, int64_t s, int64_t kh, int64_t j) {
    const int64_t page = t->shape[2], pg = d->bt[s * d->nbt + j / page];
    return pg * t->stride[0] + kh * t->stride[1] + (j % page) * t->stride[2];
}

static int64_t blocks(int64_t len, int64_t page) { return (len + page - 1) / page; }

/* n sequences of L[s] query rows and sk[s] keys, in pages taken in a shuffled order from a pool
 * with 3 spare pages; the table has one block more than the longest sequence needs, and every
 * entry no sequence uses is junk. share > 0: sequence 2's first `share` blocks are sequence 0's
 * pages (a common prompt). */
static void vb_make(const vcase *c, vbufs *d, int64_t n, const int32_t *L, const int32_t *sk,
                    int64_t share) {
    const mha_dtype dt = c->dt;
    const int64_t H = c->H, Hkv = c->Hkv, page = c->page;
    memset(d, 0, sizeof *d);
    d->n = n;
    int64_t used = 0, most = 0;
    for (int64_t s = 0; s < n; s++) {
        d->cu[s + 1] = d->cu[s] + L[s], d->sk[s] = sk[s];
        used += blocks(sk[s], page), most = sk[s] > most ? sk[s] : most;
    }
    d->Tq = d->cu[n], d->nbt = blocks(most, page) + 1, d->P = used + 3;
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)d->P);
    for (int64_t i = 0; i < d->P; i++) perm[i] = (int32_t)i;
    for (int64_t i = d->P - 1; i > 0; i--) {
        const int64_t j = irand(i + 1);
        const int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    d->bt = malloc(sizeof(int32_t) * (size_t)(n * d->nbt + 1));
    for (int64_t s = 0, k = 0; s < n; s++)
        for (int64_t i = 0; i < d->nbt; i++)
            d->bt[s * d->nbt + i] = i < blocks(sk[s], page) ? perm[k++]
                                    : i % 2                 ? (int32_t)(-1 - i)
                                                            : (int32_t)(d->P + 100 + i);
    free(perm);
    for (int64_t i = 0; i < share; i++) d->bt[2 * d->nbt + i] = d->bt[i];
    d->tkp = pool_new(c, d->P, c->D, &d->kp, &d->nkp);
    d->tvp = pool_new(c, d->P, c->Dv, &d->vp, &d->nvp);
    for (int64_t s = 0; s < n; s++) /* shared rows: written twice, the call reads the last */
        for (int64_t kh = 0; kh < Hkv; kh++)
            for (int64_t j = 0; j < sk[s]; j++) {
                for (int64_t x = 0; x < c->D; x++)
                    put(dt, d->kp, kv_off(d, &d->tkp, s, kh, j) + x, (float)(2 * urand() - 1));
                for (int64_t x = 0; x < c->Dv; x++)
                    put(dt, d->vp, kv_off(d, &d->tvp, s, kh, j) + x, (float)(2 * urand() - 1));
            }
    d->tq = rows_new(dt, c->pad, d->Tq, H, c->D, &d->q, &d->nq, NAN);
    for (int64_t r = 0; r < d->Tq; r++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t x = 0; x < c->D; x++)
                put(dt, d->q, r * d->tq.stride[0] + h * d->tq.stride[1] + x,
                    (float)(2 * urand() - 1));
    d->tout = rows_new(dt, c->pad, d->Tq, H, c->Dv, &d->out, &d->nout, 42);
    const int64_t ls[2] = {H, d->Tq}, lst[2] = {d->Tq + (c->pad ? 4 : 0), 1};
    d->nlse = H * lst[0];
    d->lse = buf_new(MHA_DTYPE_F32, d->nlse, 42);
    d->tlse = mha_tensor_strided(d->lse, 2, ls, lst);
    d->slopes = malloc(sizeof(float) * (size_t)(n * H + 1));
    for (int64_t s = 0; s < n; s++)
        for (int64_t h = 0; h < H; h++)
            d->slopes[s * H + h] =
                c->alibi == 2 ? 0.02f * (float)(h + 1) + 0.03f * (float)s : 0.05f * (float)(h + 1);
    d->mask = mha_mask_default();
    d->mask.causal = c->causal ? MHA_CAUSAL_BOTTOM_RIGHT : MHA_CAUSAL_NONE;
    d->mask.window = c->window, d->mask.window_left = c->wl, d->mask.window_right = c->wr;
    if (c->alibi) d->mask.alibi_slopes = d->slopes, d->mask.alibi_batched = c->alibi == 2;
    d->p = mha_attn_params_default();
    d->p.scale = c->scale, d->p.softcap = c->softcap;
}

static void vb_free(vbufs *d) {
    void *ps[] = {d->bt, d->q, d->kp, d->vp, d->out, d->lse, d->slopes};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) free(ps[i]);
}

static mha_status vb_run(mha_ctx *ctx, const vcase *c, vbufs *d) {
    return mha_attn_varlen_paged(ctx, &d->p, &d->tq, &d->tkp, &d->tvp, d->bt, d->nbt, d->cu, d->sk,
                                 d->n, &d->mask, &d->tout, c->no_lse ? NULL : &d->tlse);
}

/* The score definition (mha.h) in double, from the pools as the call sees them: out ro
 * [Tq, H, Dv], lse rl [H, Tq], and rp = sum_j P_j |v_j| [Tq, H, Dv] (a bound's scale). */
static void reference(const vcase *c, const vbufs *d, double *ro, double *rl, double *rp) {
    const int64_t H = c->H, D = c->D, Dv = c->Dv, group = c->H / c->Hkv;
    const double scale = c->scale > 0 ? (double)c->scale : 1.0 / sqrt((double)D);
    double *sc = malloc(sizeof(double) * 1024);
    for (int64_t s = 0; s < d->n; s++)
        for (int64_t r = d->cu[s]; r < d->cu[s + 1]; r++)
            for (int64_t h = 0; h < H; h++) {
                const int64_t kh = h / group,
                              pos = r - d->cu[s] + d->sk[s] - (d->cu[s + 1] - d->cu[s]);
                const double slope = c->alibi ? d->slopes[(c->alibi == 2 ? s * H : 0) + h] : 0;
                double *o = ro + (r * H + h) * Dv, *op = rp + (r * H + h) * Dv;
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < d->sk[s]; j++) {
                    int ok = !c->causal || j <= pos;
                    if (c->window && c->wl >= 0 && j < pos - c->wl) ok = 0;
                    if (c->window && c->wr >= 0 && j > pos + c->wr) ok = 0;
                    double x = 0;
                    const int64_t ko = kv_off(d, &d->tkp, s, kh, j);
                    for (int64_t e = 0; e < D; e++)
                        x += (double)get(c->dt, d->q,
                                         r * d->tq.stride[0] + h * d->tq.stride[1] + e) *
                             get(c->dt, d->kp, ko + e);
                    x *= scale;
                    if (c->softcap > 0) x = c->softcap * tanh(x / c->softcap);
                    x -= slope * fabs((double)(pos - j));
                    sc[j] = ok ? x : -INFINITY;
                    if (sc[j] > mx) mx = sc[j];
                }
                for (int64_t x = 0; x < Dv; x++) o[x] = op[x] = 0;
                rl[h * d->Tq + r] = -INFINITY;
                if (mx == -INFINITY) continue;
                for (int64_t j = 0; j < d->sk[s]; j++) {
                    if (sc[j] == -INFINITY) continue;
                    const double e = exp(sc[j] - mx);
                    const int64_t vo = kv_off(d, &d->tvp, s, kh, j);
                    sum += e;
                    for (int64_t x = 0; x < Dv; x++) {
                        const double v = get(c->dt, d->vp, vo + x);
                        o[x] += e * v, op[x] += e * fabs(v);
                    }
                }
                for (int64_t x = 0; x < Dv; x++) o[x] /= sum, op[x] /= sum;
                rl[h * d->Tq + r] = mx + log(sum);
            }
    free(sc);
}

static uint64_t hash(const void *p, size_t n) { /* FNV-1a */
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ ((const unsigned char *)p)[i]) * 1099511628211ull;
    return h;
}

/* Out and lse (gathered from their views) against the reference: test_decode's tolerances. */
static int check_ref(mha_ctx *ctx, const vcase *c, const vbufs *d, const double *ro,
                     const double *rl, const double *rp, const char *what) {
    const int64_t H = c->H, Dv = c->Dv, Tq = d->Tq, no = Tq * H * Dv, nl = H * Tq;
    float *go = malloc(sizeof(float) * (size_t)(no + nl + 1)), *gl = go + no;
    double *rl0 = malloc(sizeof(double) * (size_t)(nl + 1));
    const int bf16dot = mha__kernels_for(mha_ctx_isa(ctx))->attn_fwd_bf16 != NULL;
    for (int64_t s = 0; s < d->n; s++)
        for (int64_t r = d->cu[s]; r < d->cu[s + 1]; r++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t x = 0; x < Dv; x++) {
                    const int64_t i = (r * H + h) * Dv + x;
                    go[i] = get(c->dt, d->out, r * d->tout.stride[0] + h * d->tout.stride[1] + x);
                    /* bf16 with the dense core's or AVX512_BF16's kernels: probabilities
                     * rounded to bf16 for the product with V, 2^-8 sum_j P_j |v_j| at most
                     * (test_decode), taken off the error before the usual tolerance */
                    const int prefill =
                        (d->cu[s + 1] - d->cu[s]) * H / c->Hkv > MHA__ATTN_DECODE_ROWS;
                    if (c->dt == MHA_DTYPE_BF16 && (prefill || bf16dot)) {
                        const double e = (double)go[i] - ro[i], extra = 0x1p-8 * rp[i];
                        go[i] = (float)(ro[i] + (fabs(e) <= extra ? 0
                                                 : e > 0          ? e - extra
                                                                  : e + extra));
                    }
                }
    char msg[300];
    snprintf(msg, sizeof msg, "%s [%s] out", what, mha_isa_name(mha_ctx_isa(ctx)));
    const double rt = 2e-4 + (c->dt == MHA_DTYPE_BF16  ? 0x1p-8
                              : c->dt == MHA_DTYPE_F16 ? 0x1p-11
                                                       : 0);
    int ok = harness_near(__FILE__, __LINE__, msg, go, ro, no, rt, 2e-5);
    snprintf(msg, sizeof msg, "%s [%s] lse", what, mha_isa_name(mha_ctx_isa(ctx)));
    for (int64_t h = 0; ok && !c->no_lse && h < H; h++)
        for (int64_t r = 0; ok && r < Tq; r++) {
            const int64_t i = h * Tq + r;
            gl[i] = d->lse[h * d->tlse.stride[0] + r], rl0[i] = rl[i];
            if ((gl[i] == -INFINITY) != (rl[i] == -INFINITY)) {
                FAILF("%s [%lld][%lld]: got %g, expected %g", msg, (long long)h, (long long)r,
                      (double)gl[i], rl[i]);
                ok = 0;
            }
            if (rl[i] == -INFINITY) gl[i] = 0, rl0[i] = 0; /* (harness_near: inf - inf) */
        }
    if (ok && !c->no_lse) ok = harness_near(__FILE__, __LINE__, msg, gl, rl0, nl, 1e-5, 1e-5);
    /* the padding between the views' rows is not written (nor lse with lse NULL) */
    const int64_t hs = d->tout.stride[1], ts = d->tout.stride[0];
    for (int64_t i = 0; ok && i < d->nout; i++)
        if (((i % ts) / hs >= H || (i % ts) % hs >= Dv) && get(c->dt, d->out, i) != 42) {
            FAILF("%s: out's padding [%lld] was written", what, (long long)i);
            ok = 0;
        }
    for (int64_t i = 0; ok && i < d->nlse; i++)
        if ((c->no_lse || i % d->tlse.stride[0] >= Tq) && d->lse[i] != 42) {
            FAILF("%s: lse [%lld] was written", what, (long long)i);
            ok = 0;
        }
    free(go), free(rl0);
    return ok;
}

/* Each sequence alone through mha_attn_kvcache_paged (B = 1, its rows of q, its table row, its
 * slopes): the same bits as its rows of the varlen call's out and lse. */
static int check_each(mha_ctx *ctx, const vcase *c, vbufs *d, const char *what) {
    const int64_t H = c->H, Dv = c->Dv;
    const size_t es = esize(c->dt);
    for (int64_t s = 0; s < d->n; s++) {
        const int64_t L = d->cu[s + 1] - d->cu[s];
        if (L == 0) continue;
        const int64_t qs[4] = {1, H, L, c->D},
                      qst[4] = {L * d->tq.stride[0], d->tq.stride[1], d->tq.stride[0], 1};
        const int64_t os[4] = {1, H, L, Dv}, ls[3] = {1, H, L};
        mha_tensor q1 = mha_tensor_typed((char *)d->q + d->cu[s] * d->tq.stride[0] * (int64_t)es,
                                         c->dt, 4, qs, qst);
        void *o1 = buf_new(c->dt, H * L * Dv, 7);
        float *l1 = malloc(sizeof(float) * (size_t)(H * L));
        mha_tensor to1 = mha_tensor_typed(o1, c->dt, 4, os, NULL), tl1 = mha_tensor_make(l1, 3, ls);
        mha_mask m1 = d->mask;
        if (c->alibi == 2) m1.alibi_slopes += s * H;
        const mha_status st =
            mha_attn_kvcache_paged(ctx, &d->p, &q1, &d->tkp, &d->tvp, d->bt + s * d->nbt, d->nbt,
                                   NULL, NULL, &d->sk[s], &m1, &to1, c->no_lse ? NULL : &tl1);
        int ok = st == MHA_OK;
        if (!ok) FAILF("%s: sequence %lld alone: %s", what, (long long)s, mha_ctx_errmsg(ctx));
        for (int64_t h = 0; ok && h < H; h++)
            for (int64_t i = 0; ok && i < L; i++) {
                const int64_t r = d->cu[s] + i;
                const char *a =
                    (char *)d->out + (r * d->tout.stride[0] + h * d->tout.stride[1]) * (int64_t)es;
                const char *b = (char *)o1 + (h * L + i) * Dv * (int64_t)es;
                if (memcmp(a, b, (size_t)Dv * es) != 0) {
                    FAILF("%s: out row %lld head %lld (sequence %lld) differs from the "
                          "sequence alone's",
                          what, (long long)r, (long long)h, (long long)s);
                    ok = 0;
                }
                const float la = d->lse[h * d->tlse.stride[0] + r], lb = l1[h * L + i];
                if (ok && !c->no_lse && memcmp(&la, &lb, 4) != 0) {
                    FAILF("%s: lse[%lld][%lld] %.9g, the sequence alone's %.9g", what, (long long)h,
                          (long long)r, (double)la, (double)lb);
                    ok = 0;
                }
            }
        free(o1), free(l1);
        if (!ok) return 0;
    }
    return 1;
}

/* The call on ctx against the reference and against each sequence alone; then on ctx1 (one
 * thread, the same ISA): the same bits. The inputs are not written. */
static int check_call(mha_ctx *ctx, mha_ctx *ctx1, const vcase *c, vbufs *d, const double *ro,
                      const double *rl, const double *rp, const char *what) {
    const size_t es = esize(c->dt);
    const uint64_t h0 = hash(d->q, (size_t)d->nq * es) ^ hash(d->kp, (size_t)d->nkp * es) ^
                        hash(d->vp, (size_t)d->nvp * es);
    for (int64_t i = 0; i < d->nout; i++) put(c->dt, d->out, i, 42);
    for (int64_t i = 0; i < d->nlse; i++) d->lse[i] = 42;
    mha_status st = vb_run(ctx, c, d);
    if (st != MHA_OK) {
        FAILF("%s [%s]: %s: %s", what, mha_isa_name(mha_ctx_isa(ctx)), mha_status_str(st),
              mha_ctx_errmsg(ctx));
        return 0;
    }
    if (!check_ref(ctx, c, d, ro, rl, rp, what) || !check_each(ctx, c, d, what)) return 0;
    void *o2 = malloc((size_t)d->nout * es + 1);
    float *l2 = malloc(sizeof(float) * (size_t)(d->nlse + 1));
    memcpy(o2, d->out, (size_t)d->nout * es), memcpy(l2, d->lse, sizeof(float) * (size_t)d->nlse);
    mha_ctx_set_isa(ctx1, mha_ctx_isa(ctx));
    st = vb_run(ctx1, c, d);
    int ok = st == MHA_OK;
    if (!ok) FAILF("%s: 1 thread: %s", what, mha_ctx_errmsg(ctx1));
    if (ok && (memcmp(o2, d->out, (size_t)d->nout * es) != 0 ||
               memcmp(l2, d->lse, sizeof(float) * (size_t)d->nlse) != 0)) {
        FAILF("%s [%s]: 1 and 2 threads: different bits", what, mha_isa_name(mha_ctx_isa(ctx)));
        ok = 0;
    }
    if (ok && (hash(d->q, (size_t)d->nq * es) ^ hash(d->kp, (size_t)d->nkp * es) ^
               hash(d->vp, (size_t)d->nvp * es)) != h0) {
        FAILF("%s: q or the pools were written", what);
        ok = 0;
    }
    free(o2), free(l2);
    return ok;
}

static const mha_dtype DTYPES[3] = {MHA_DTYPE_F32, MHA_DTYPE_BF16, MHA_DTYPE_F16};

static mha_ctx *new_ctx(int threads) {
    mha_ctx *ctx;
    if (mha_ctx_create(&ctx) != MHA_OK) abort();
    mha_ctx_set_threads(ctx, threads);
    return ctx;
}

/* The reference once, then the call on every ISA. */
static int check_batch(mha_ctx *ctx, mha_ctx *ctx1, const vcase *c, vbufs *d, const char *what) {
    const int64_t no = d->Tq * c->H * c->Dv, nl = c->H * d->Tq;
    double *ro = malloc(sizeof(double) * (size_t)(2 * no + nl + 1)), *rp = ro + no, *rl = rp + no;
    reference(c, d, ro, rl, rp);
    int ok = 1;
    FOR_EACH_ISA(ctx) {
        if (!(ok = check_call(ctx, ctx1, c, d, ro, rl, rp, what))) break;
    }
    free(ro);
    return ok;
}

/* A continuous-batching step: 6 .. 12 sequences with 0 .. 40 query rows (runs of equal counts,
 * which run as one batch) and 0 .. 700 keys; one sequence with fewer keys than rows. */
static int64_t gen_batch(int32_t *L, int32_t *sk) {
    static const int32_t Ls[8] = {0, 1, 1, 1, 2, 5, 17, 40};
    const int64_t n = 6 + irand(MAXSEQ - 5);
    for (int64_t s = 0; s < n; s++) {
        L[s] = s > 0 && urand() < 0.3 ? L[s - 1] : Ls[irand(8)];
        const double r = urand();
        sk[s] = r < 0.1                ? 0
                : r < 0.25 && L[s] > 1 ? (int32_t)irand(L[s])
                : r < 0.35             ? 700
                                       : L[s] + (int32_t)irand(701 - L[s]);
    }
    const int64_t s = irand(n);
    L[s] = 17, sk[s] = (int32_t)irand(17);
    return n;
}

TEST(random_batches_match_reference) {
    mha_ctx *ctx = new_ctx(2), *ctx1 = new_ctx(1);
    const vcase cases[] = {
        {.H = 8, .Hkv = 2, .D = 64, .Dv = 64, .page = 16, .causal = 1},
        {.H = 8,
         .Hkv = 1,
         .D = 40,
         .Dv = 24,
         .page = 7,
         .causal = 1,
         .window = 1,
         .wl = 100,
         .wr = 0,
         .alibi = 1,
         .layout = 1,
         .pad = 1},
        {.H = 4,
         .Hkv = 4,
         .D = 64,
         .Dv = 64,
         .page = 512,
         .softcap = 30,
         .alibi = 2,
         .scale = 0.2f,
         .pad = 1},
        {.H = 8,
         .Hkv = 2,
         .D = 40,
         .Dv = 24,
         .page = 1,
         .causal = 1,
         .window = 1,
         .wl = 30,
         .wr = 5,
         .layout = 1,
         .no_lse = 1},
        {.H = 2,
         .Hkv = 2,
         .D = 64,
         .Dv = 64,
         .page = 64,
         .window = 1,
         .wl = -1,
         .wr = 3,
         .softcap = 50,
         .alibi = 2,
         .layout = 1,
         .pad = 1},
        {.H = 8,
         .Hkv = 1,
         .D = 64,
         .Dv = 64,
         .page = 16,
         .causal = 1,
         .alibi = 1,
         .softcap = 20,
         .pad = 1},
    };
    for (size_t v = 0; v < sizeof cases / sizeof cases[0]; v++)
        for (int di = 0; di < 6; di++) {
            vcase c = cases[v];
            c.dt = DTYPES[di % 3];
            int32_t L[MAXSEQ], sk[MAXSEQ];
            const int64_t n = gen_batch(L, sk);
            vbufs d;
            vb_make(&c, &d, n, L, sk, 0);
            char what[400];
            int k = snprintf(what, sizeof what,
                             "case %d %s H%lld/%lld D%lld/%lld page %lld causal %d window %d "
                             "(%lld, %lld) alibi %d softcap %g layout %d pad %d; L/sk",
                             (int)v, mha_dtype_name(c.dt), (long long)c.H, (long long)c.Hkv,
                             (long long)c.D, (long long)c.Dv, (long long)c.page, c.causal, c.window,
                             (long long)c.wl, (long long)c.wr, c.alibi, (double)c.softcap, c.layout,
                             c.pad);
            for (int64_t s = 0; s < n && k < (int)sizeof what - 16; s++)
                k += snprintf(what + k, sizeof what - (size_t)k, " %d/%d", L[s], sk[s]);
            const int ok = check_batch(ctx, ctx1, &c, &d, what);
            vb_free(&d);
            if (!ok) goto done;
        }
done:
    mha_ctx_free(ctx), mha_ctx_free(ctx1);
}

/* Sequences 0 and 2 share a prompt's first 4 pages (64 keys); each then has pages of its own. */
TEST(shared_prompt_pages) {
    mha_ctx *ctx = new_ctx(2), *ctx1 = new_ctx(1);
    for (int di = 0; di < 3; di++) {
        const vcase c = {.dt = DTYPES[di],
                         .H = 4,
                         .Hkv = 2,
                         .D = 32,
                         .Dv = 32,
                         .page = 16,
                         .causal = 1,
                         .layout = di == 1};
        const int32_t L[4] = {1, 5, 1, 20}, sk[4] = {100, 60, 70, 64};
        vbufs d;
        vb_make(&c, &d, 4, L, sk, 4);
        ASSERT_TRUE(d.bt[2 * d.nbt + 3] == d.bt[3] && d.bt[2 * d.nbt + 4] != d.bt[4]);
        const int ok = check_batch(ctx, ctx1, &c, &d, mha_dtype_name(c.dt));
        vb_free(&d);
        if (!ok) break;
    }
    mha_ctx_free(ctx), mha_ctx_free(ctx1);
}

/* Every bad argument: the documented status, a message naming it, and out, lse, q and the
 * pools untouched. */
TEST(bad_arguments_nothing_written) {
    mha_ctx *ctx = new_ctx(2);
    const vcase c = {
        .dt = MHA_DTYPE_F32, .H = 4, .Hkv = 2, .D = 8, .Dv = 8, .page = 8, .causal = 1};
    const int32_t L[3] = {1, 3, 2}, SK[3] = {10, 20, 5}; /* Tq 6; max_blocks 4, 32 rows */
    vbufs d;
    vb_make(&c, &d, 3, L, SK, 0);
    ASSERT_EQ(d.P, 9);
    uint16_t q16[6 * 4 * 8] = {0};
    const int64_t q16s[3] = {6, 4, 8}, q4s[4] = {1, 6, 4, 8};
    const uint8_t kpad[64] = {0};
    const size_t bytes[4] = {(size_t)d.nq * 4, (size_t)d.nkp * 4, (size_t)d.nout * 4,
                             (size_t)d.nlse * 4};
    void *bufs[4] = {d.q, d.kp, d.out, d.lse}, *keep[4];
    static const char *names[4] = {"q", "k_pages", "out", "lse"};
    for (int i = 0; i < 4; i++) keep[i] = malloc(bytes[i]), memcpy(keep[i], bufs[i], bytes[i]);
    int32_t *ints = calloc(256, sizeof(int32_t)); /* out and lse over the integer arrays */
    for (int k = 0; k < 35; k++) {
        mha_tensor q = d.tq, kp = d.tkp, vp = d.tvp, out = d.tout, lse = d.tlse;
        const mha_tensor *pq = &q;
        int32_t cu[4], sk[3], bt[3 * 4];
        memcpy(cu, d.cu, sizeof cu), memcpy(sk, d.sk, sizeof sk), memcpy(bt, d.bt, sizeof bt);
        const int32_t *pcu = cu, *psk = sk, *pbt = bt;
        int64_t batch = 3, nbt = d.nbt;
        mha_attn_params p = d.p;
        mha_mask m = d.mask;
        mha_status want_st = MHA_ERR_INVALID_ARG;
        const char *want = NULL;
        switch (k) {
        case 0: cu[0] = 1, want = "cu_seqlens_q[0]: got 1, expected 0"; break;
        case 1: cu[2] = 0, want = "cu_seqlens_q[2]: got 0, expected >= 1"; break;
        case 2: cu[3] = 5, want = "cu_seqlens_q[3]: got 5, expected 6"; break;
        case 3: pcu = NULL, want = "cu_seqlens_q: got NULL"; break;
        case 4: psk = NULL, want = "seqlens_k: got NULL"; break;
        case 5: sk[1] = -1, want = "seqlens_k[1]: got -1, expected 0 .. 32"; break;
        case 6: sk[2] = 33, want = "seqlens_k[2]: got 33, expected 0 .. 32"; break;
        case 7: bt[4] = 9, want = "block_table[1][0]: got 9, expected a page in [0, 9)"; break;
        case 8: bt[8 + 0] = -1, want = "block_table[2][0]: got -1, expected a page"; break;
        case 9: /* sequence 1's 20 keys: blocks 0 .. 2 */
            bt[4 + 2] = 100, want = "block_table[1][2]: got 100, expected a page in [0, 9)";
            break;
        case 10: pbt = NULL, want = "block_table: got NULL with max_blocks 4"; break;
        case 11: batch = -1, want = "batch: got -1, expected >= 0"; break;
        case 12: nbt = -1, want = "max_blocks: got -1"; break;
        case 13:
            kp.shape[1] = vp.shape[1] = 3, want_st = MHA_ERR_SHAPE;
            want = "k_pages.shape[1]: got 3, expected a divisor of q's 4 heads";
            break;
        case 14:
            q = mha_tensor_typed(d.q, c.dt, 4, q4s, NULL), want_st = MHA_ERR_SHAPE;
            want = "q.ndim: got 4, expected 3";
            break;
        case 15: pq = NULL, want = "q: got NULL"; break;
        case 16:
            out.shape[1] = 3, want_st = MHA_ERR_SHAPE, want = "out.shape[1]: got 3, expected 4";
            break;
        case 17:
            out.shape[2] = 7, want_st = MHA_ERR_SHAPE, want = "out.shape[2]: got 7, expected 8";
            break;
        case 18:
            lse.shape[1] = 5, want_st = MHA_ERR_SHAPE, want = "lse.shape[1]: got 5, expected 6";
            break;
        case 19:
            vp.shape[2] = 4, want_st = MHA_ERR_SHAPE, want = "v_pages.shape[2]: got 4, expected 8";
            break;
        case 20:
            q = mha_tensor_typed(q16, MHA_DTYPE_BF16, 3, q16s, NULL), want_st = MHA_ERR_UNSUPPORTED;
            want = "k_pages.dtype: got float32, expected bfloat16";
            break;
        case 21:
            out.dtype = MHA_DTYPE_F16, want_st = MHA_ERR_UNSUPPORTED;
            want = "out.dtype: got float16, expected float32";
            break;
        case 22: p.dropout_p = 0.1f, want = "p->dropout_p: got 0.1, expected 0"; break;
        case 23:
            m.key_padding = kpad, want_st = MHA_ERR_UNSUPPORTED;
            want = "mask->key_padding: got a mask, expected NULL";
            break;
        case 24: out.data = d.q, want = "out overlaps q"; break;
        case 25: lse.data = d.out, want = "lse overlaps out"; break;
        case 26: out.data = d.kp, want = "out overlaps k_pages"; break;
        case 27: cu[1] = 7, want = "cu_seqlens_q[1]: got 7, expected <= 6"; break;
        case 28:
            lse.dtype = MHA_DTYPE_BF16, want_st = MHA_ERR_UNSUPPORTED;
            want = "lse.dtype: got bfloat16, expected float32";
            break;
        case 29: out.stride[0] = 0, want = "out: got a view whose elements share memory"; break;
        case 30:
            m.window = 1, m.window_left = -2, want = "mask->window_left: got -2, expected >= -1";
            break;
        case 31: /* a finite slope per (sequence, head): [batch, H] */
            m.alibi_slopes = d.slopes, m.alibi_batched = 1, d.slopes[2 * 4 + 3] = NAN;
            want = "mask->alibi_slopes[11]: got nan";
            break;
        /* the integer arrays are read while out and lse are written */
        case 32:
            memcpy(ints, cu, sizeof cu), pcu = ints, lse.data = (float *)ints;
            want = "lse overlaps cu_seqlens_q";
            break;
        case 33:
            memcpy(ints + 8, sk, sizeof sk), psk = ints + 8, out.data = (float *)ints;
            want = "out overlaps seqlens_k";
            break;
        case 34:
            memcpy(ints + 8, bt, sizeof bt), pbt = ints + 8, lse.data = (float *)ints;
            want = "lse overlaps block_table";
            break;
        }
        int32_t ints0[256];
        memcpy(ints0, ints, sizeof ints0);
        const mha_status st =
            mha_attn_varlen_paged(ctx, &p, pq, &kp, &vp, pbt, nbt, pcu, psk, batch, &m, &out, &lse);
        if (st != want_st)
            FAILF("case %d: got %s, expected %s (%s)", k, mha_status_str(st),
                  mha_status_str(want_st), mha_ctx_errmsg(ctx));
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_attn_varlen_paged: ");
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), want);
        for (int i = 0; i < 4; i++)
            if (memcmp(keep[i], bufs[i], bytes[i]) != 0) {
                FAILF("case %d (%s): %s was written", k, want, names[i]);
                memcpy(bufs[i], keep[i], bytes[i]);
            }
        if (memcmp(ints0, ints, sizeof ints0) != 0) FAILF("case %d (%s): written", k, want);
    }
    /* entries past the blocks a sequence uses are never read: junk is accepted */
    d.bt[2] = 1000, d.bt[3] = -7, d.bt[8 + 1] = INT32_MIN;
    ASSERT_OK(ctx, vb_run(ctx, &c, &d));
    for (int i = 0; i < 4; i++) free(keep[i]);
    free(ints);
    vb_free(&d);
    mha_ctx_free(ctx);
}

/* Nothing to compute: no sequences, sequences without query rows, no heads; and sequences
 * without keys (no table at all): out 0, lse -inf. */
TEST(empty_batches) {
    mha_ctx *ctx = new_ctx(2);
    float q[3 * 2 * 4], out[3 * 2 * 3], lse[2 * 3];
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++) q[i] = 0.5f;
    const int64_t ps[4] = {2, 1, 4, 4}, pvs[4] = {2, 1, 4, 3};
    float kp[2 * 4 * 4] = {0}, vp[2 * 4 * 3] = {0};
    mha_tensor tk = mha_tensor_make(kp, 4, ps), tv = mha_tensor_make(vp, 4, pvs);
    const int32_t bt[3] = {0, 1, 0};
    for (int k = 0; k < 4; k++) {
        const int64_t T = k == 0 || k == 1 ? 0 : 3, H = k == 2 ? 0 : 2, batch = k == 0 ? 0 : 3;
        const int64_t qs[3] = {T, H, 4}, os[3] = {T, H, 3}, ls[2] = {H, T};
        const int32_t cu[4][4] = {{0}, {0, 0, 0, 0}, {0, 1, 1, 3}, {0, 2, 2, 3}};
        const int32_t lens[4][3] = {{0}, {4, 0, 3}, {4, 1, 0}, {0, 0, 0}};
        mha_tensor tq = mha_tensor_make(q, 3, qs), to = mha_tensor_make(out, 3, os),
                   tl = mha_tensor_make(lse, 2, ls);
        for (size_t i = 0; i < sizeof out / sizeof out[0]; i++) out[i] = 42;
        for (size_t i = 0; i < sizeof lse / sizeof lse[0]; i++) lse[i] = 42;
        /* k 3: no keys, no table */
        ASSERT_OK(ctx, mha_attn_varlen_paged(ctx, NULL, &tq, &tk, &tv, k == 3 ? NULL : bt,
                                             k == 3 ? 0 : 1, cu[k], k == 0 ? NULL : lens[k], batch,
                                             NULL, &to, &tl));
        for (size_t i = 0; i < sizeof out / sizeof out[0]; i++)
            ASSERT_TRUE(k == 3 ? out[i] == 0 : out[i] == 42);
        for (size_t i = 0; i < sizeof lse / sizeof lse[0]; i++)
            ASSERT_TRUE(k == 3 ? lse[i] == -INFINITY : lse[i] == 42);
    }
    mha_ctx_free(ctx);
}

int main(void) {
    RUN(random_batches_match_reference);
    RUN(shared_prompt_pages);
    RUN(bad_arguments_nothing_written);
    RUN(empty_batches);
    return harness_report();
}
