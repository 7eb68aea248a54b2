/* test_paged_store.c - mha_paged_store: tokens' keys and values into paged caches by slot. The
 * rows land where their slots say (every key/value head, both pool layouts, float32, bfloat16
 * and half) and nothing else of the pools changes; storing a step's tokens and attending with
 * mha_attn_varlen_paged gives the pools and the outputs of mha_attn_kvcache_paged appending
 * them itself, bitwise; every bad argument is refused with a message naming it and nothing
 * written. */
#include "harness.h"

#define TEST_RNG_SEED 0x51075707ull
#include "rng.h"

static size_t esize(mha_dtype dt) { return dt == MHA_DTYPE_F32 ? 4 : 2; }

/* A pool [P, G, page, X] of dt: contiguous, or (bshd) a view of [P, page, G, X] memory. */
static mha_tensor pool_view(void *buf, mha_dtype dt, int64_t P, int64_t G, int64_t page, int64_t X,
                            int bshd) {
    const int64_t sh[4] = {P, G, page, X}, st[4] = {page * G * X, X, G * X, 1};
    return mha_tensor_typed(buf, dt, 4, sh, bshd ? st : NULL);
}

/* n random bytes (any dtype's bits: the call copies them as they are) */
static void *rand_bytes(size_t n) {
    unsigned char *p = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)irand(256);
    return p;
}

/* Each token's rows at its slot, -1 skipped, the rest of the pools untouched; both layouts and
 * every dtype. */
TEST(rows_land_at_their_slots) {
    const mha_dtype dts[3] = {MHA_DTYPE_F32, MHA_DTYPE_BF16, MHA_DTYPE_F16};
    const int64_t P = 6, G = 2, page = 5, D = 8, Dv = 3, T = 9;
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    for (int di = 0; di < 3; di++)
        for (int bshd = 0; bshd < 2; bshd++) {
            const mha_dtype dt = dts[di];
            const size_t es = esize(dt), nk = (size_t)(P * G * page * D) * es,
                         nv = (size_t)(P * G * page * Dv) * es;
            unsigned char *kp = rand_bytes(nk), *vp = rand_bytes(nv);
            unsigned char *kp0 = malloc(nk), *vp0 = malloc(nv);
            memcpy(kp0, kp, nk), memcpy(vp0, vp, nv);
            void *kb = rand_bytes((size_t)(T * G * D) * es),
                 *vb = rand_bytes((size_t)(T * G * Dv) * es);
            const int64_t slots[9] = {17, 0, -1, 29, 5, 12, -1, 4, 23};
            mha_tensor tkp = pool_view(kp, dt, P, G, page, D, bshd);
            mha_tensor tvp = pool_view(vp, dt, P, G, page, Dv, bshd);
            const int64_t sk[3] = {T, G, D}, sv[3] = {T, G, Dv};
            mha_tensor tk = mha_tensor_typed(kb, dt, 3, sk, NULL);
            mha_tensor tv = mha_tensor_typed(vb, dt, 3, sv, NULL);
            ASSERT_OK(ctx, mha_paged_store(ctx, &tkp, &tvp, &tk, &tv, slots));
            /* the expected pools: the old ones with each stored row copied in */
            for (int64_t t = 0; t < T; t++) {
                if (slots[t] < 0) continue;
                const int64_t x = slots[t] / page, r = slots[t] % page;
                for (int64_t h = 0; h < G; h++) {
                    const int64_t ok =
                        bshd ? ((x * page + r) * G + h) * D : ((x * G + h) * page + r) * D;
                    const int64_t ov =
                        bshd ? ((x * page + r) * G + h) * Dv : ((x * G + h) * page + r) * Dv;
                    memcpy(kp0 + (size_t)ok * es, (char *)kb + (size_t)((t * G + h) * D) * es,
                           (size_t)D * es);
                    memcpy(vp0 + (size_t)ov * es, (char *)vb + (size_t)((t * G + h) * Dv) * es,
                           (size_t)Dv * es);
                }
            }
            if (memcmp(kp, kp0, nk) || memcmp(vp, vp0, nv))
                FAILF("%s layout %d: the pools differ from the expected ones", mha_dtype_name(dt),
                      bshd);
            free(kp), free(vp), free(kp0), free(vp0), free(kb), free(vb);
        }
    /* no tokens: nothing to do, slot_mapping may be NULL */
    float pk[2 * 4] = {0}, pv[2 * 4] = {0}, none[1];
    const int64_t sp[4] = {1, 1, 2, 4}, s0[3] = {0, 1, 4};
    mha_tensor tpk = mha_tensor_make(pk, 4, sp), tpv = mha_tensor_make(pv, 4, sp);
    mha_tensor t0 = mha_tensor_make(none, 3, s0);
    ASSERT_OK(ctx, mha_paged_store(ctx, &tpk, &tpv, &t0, &t0, NULL));
    mha_ctx_free(ctx);
}

/* A step stored by mha_paged_store, then attended by mha_attn_varlen_paged, against
 * mha_attn_kvcache_paged appending the same tokens itself: the same pools and outputs, bitwise
 * (decoding sequences and a prefill chunk; pages in a shuffled order). */
TEST(store_then_attend_as_kvcache_paged_appends) {
    enum {
        B = 3,
        H = 8,
        G = 2,
        D = 16,
        PAGE = 4,
        NB = 8,
        P = B * NB + 2,
        L = 3
    };
    const int32_t lens[B] = {5, 0, 20}; /* tokens cached before the step */
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    const size_t pool_n = (size_t)(P * G * PAGE * D);
    float *kp1 = malloc(sizeof(float) * pool_n), *vp1 = malloc(sizeof(float) * pool_n);
    for (size_t i = 0; i < pool_n; i++) kp1[i] = frand(), vp1[i] = frand();
    float *kp2 = malloc(sizeof(float) * pool_n), *vp2 = malloc(sizeof(float) * pool_n);
    memcpy(kp2, kp1, sizeof(float) * pool_n), memcpy(vp2, vp1, sizeof(float) * pool_n);
    int32_t table[B * NB], perm[P];
    for (int i = 0; i < P; i++) perm[i] = i;
    for (int i = P - 1; i > 0; i--) {
        const int j = (int)irand(i + 1), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    for (int i = 0; i < B * NB; i++) table[i] = perm[i];
    /* the step: L new tokens per sequence, q [B, H, L, D] and new rows [B, G, L, D] */
    float q[B * H * L * D], kn[B * G * L * D], vn[B * G * L * D];
    for (int i = 0; i < B * H * L * D; i++) q[i] = frand();
    for (int i = 0; i < B * G * L * D; i++) kn[i] = frand(), vn[i] = frand();
    const int64_t sq[4] = {B, H, L, D}, sn[4] = {B, G, L, D};
    mha_tensor tq = mha_tensor_make(q, 4, sq), tkn = mha_tensor_make(kn, 4, sn);
    mha_tensor tvn = mha_tensor_make(vn, 4, sn);
    mha_mask mask = mha_mask_default();
    mask.causal = MHA_CAUSAL_BOTTOM_RIGHT;
    float out1[B * H * L * D], out2[B * H * L * D], lse1[B * H * L], lse2[H * B * L];
    mha_tensor to1 = mha_tensor_make(out1, 4, sq), tl1 = mha_tensor_make(lse1, 3, sq);
    mha_tensor tkp1 = pool_view(kp1, MHA_DTYPE_F32, P, G, PAGE, D, 0);
    mha_tensor tvp1 = pool_view(vp1, MHA_DTYPE_F32, P, G, PAGE, D, 0);
    ASSERT_OK(ctx, mha_attn_kvcache_paged(ctx, NULL, &tq, &tkp1, &tvp1, table, NB, &tkn, &tvn, lens,
                                          &mask, &to1, &tl1));
    /* the same through the slots: token t of sequence b at position lens[b] + t; q, out and
     * the new rows packed [B * L, ., D] (token rows of sequence b one after another) */
    int64_t slots[B * L];
    float kt[B * L * G * D], vt[B * L * G * D], qt[B * L * H * D];
    int32_t cu[B + 1], seqk[B];
    for (int b = 0; b < B; b++) {
        cu[b] = b * L, seqk[b] = lens[b] + L;
        for (int t = 0; t < L; t++) {
            const int64_t j = lens[b] + t, row = b * L + t;
            slots[row] = (int64_t)table[b * NB + j / PAGE] * PAGE + j % PAGE;
            for (int h = 0; h < G; h++)
                for (int x = 0; x < D; x++) {
                    kt[(row * G + h) * D + x] = kn[((b * G + h) * L + t) * D + x];
                    vt[(row * G + h) * D + x] = vn[((b * G + h) * L + t) * D + x];
                }
            for (int h = 0; h < H; h++)
                for (int x = 0; x < D; x++)
                    qt[(row * H + h) * D + x] = q[((b * H + h) * L + t) * D + x];
        }
    }
    cu[B] = B * L;
    const int64_t st3[3] = {B * L, G, D}, sq3[3] = {B * L, H, D}, sl2[2] = {H, B * L};
    mha_tensor tkt = mha_tensor_make(kt, 3, st3), tvt = mha_tensor_make(vt, 3, st3);
    mha_tensor tkp2 = pool_view(kp2, MHA_DTYPE_F32, P, G, PAGE, D, 0);
    mha_tensor tvp2 = pool_view(vp2, MHA_DTYPE_F32, P, G, PAGE, D, 0);
    ASSERT_OK(ctx, mha_paged_store(ctx, &tkp2, &tvp2, &tkt, &tvt, slots));
    ASSERT_TRUE(memcmp(kp1, kp2, sizeof(float) * pool_n) == 0);
    ASSERT_TRUE(memcmp(vp1, vp2, sizeof(float) * pool_n) == 0);
    mha_tensor tqt = mha_tensor_make(qt, 3, sq3), to2 = mha_tensor_make(out2, 3, sq3);
    mha_tensor tl2 = mha_tensor_make(lse2, 2, sl2);
    ASSERT_OK(ctx, mha_attn_varlen_paged(ctx, NULL, &tqt, &tkp2, &tvp2, table, NB, cu, seqk, B,
                                         &mask, &to2, &tl2));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < L; t++) {
                const int row = b * L + t;
                if (memcmp(&out1[((b * H + h) * L + t) * D], &out2[(row * H + h) * D],
                           sizeof(float) * D) ||
                    memcmp(&lse1[(b * H + h) * L + t], &lse2[h * B * L + row], sizeof(float))) {
                    FAILF("sequence %d head %d token %d: out or lse differ", b, h, t);
                    goto done;
                }
            }
done:
    free(kp1), free(vp1), free(kp2), free(vp2);
    mha_ctx_free(ctx);
}

/* Every bad argument: the status, a message naming it, the pools untouched. */
TEST(bad_arguments_nothing_written) {
    enum {
        P = 3,
        G = 2,
        PAGE = 4,
        D = 8,
        T = 3
    };
    float kp[P * G * PAGE * D], vp[P * G * PAGE * D], k[T * G * D], v[T * G * D];
    uint16_t kh[T * G * D] = {0};
    for (int i = 0; i < P * G * PAGE * D; i++) kp[i] = 1.0f, vp[i] = 2.0f;
    for (int i = 0; i < T * G * D; i++) k[i] = 3.0f, v[i] = 4.0f;
    const int64_t sp[4] = {P, G, PAGE, D}, sk[3] = {T, G, D};
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    for (int c = 0;; c++) {
        mha_tensor tkp = mha_tensor_make(kp, 4, sp), tvp = mha_tensor_make(vp, 4, sp);
        mha_tensor tk = mha_tensor_make(k, 3, sk), tv = mha_tensor_make(v, 3, sk);
        int64_t slots[T] = {0, 5, 11};
        const int64_t *ps = slots;
        const char *want = NULL;
        mha_status wst = MHA_ERR_INVALID_ARG;
        switch (c) {
        case 0:
            slots[1] = 12, want = "slot_mapping[1]: got 12, expected -1 (skip the token) or "
                                  "a slot in [0, 12)";
            break;
        case 1: slots[2] = -2, want = "slot_mapping[2]: got -2"; break;
        case 2: slots[2] = 0, want = "slot_mapping[2]: got 0, also slot_mapping[0]'s"; break;
        case 3: ps = NULL, want = "slot_mapping: got NULL, expected int64 [T] = [3]"; break;
        case 4:
            tk.shape[1] = 1, tk.shape[2] = 16, wst = MHA_ERR_SHAPE,
            want = "k.shape[1]: got 1, expected 2";
            break;
        case 5: tv.shape[0] = 2, wst = MHA_ERR_SHAPE, want = "v.shape[0]: got 2, expected 3"; break;
        case 6:
            tvp.shape[2] = 2, wst = MHA_ERR_SHAPE, want = "v_pages.shape[2]: got 2, expected 4";
            break;
        case 7:
            tk = mha_tensor_typed(kh, MHA_DTYPE_BF16, 3, sk, NULL), wst = MHA_ERR_UNSUPPORTED,
            want = "k.dtype: got bfloat16, expected float32";
            break;
        case 8: tk.data = kp, want = "k_pages overlaps k"; break;
        case 9: tvp.data = kp, want = "v_pages overlaps k_pages"; break;
        case 10: tkp.stride[0] = 0, want = "k_pages: got a view whose elements share memory"; break;
        case 11:
            ps = (const int64_t *)(const void *)kp, want = "k_pages overlaps slot_mapping";
            memcpy(kp, slots, sizeof slots);
            break;
        case 12: tkp.ndim = 3, wst = MHA_ERR_SHAPE, want = "k_pages.ndim: got 3, expected 4"; break;
        default: break;
        }
        if (!want) break;
        float kp0[P * G * PAGE * D], vp0[P * G * PAGE * D];
        memcpy(kp0, kp, sizeof kp), memcpy(vp0, vp, sizeof vp);
        const mha_status st = mha_paged_store(ctx, &tkp, &tvp, &tk, &tv, ps);
        if (st != wst)
            FAILF("case %d: got %s (%s), expected %s", c, mha_status_str(st), mha_ctx_errmsg(ctx),
                  mha_status_str(wst));
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_paged_store: ");
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), want);
        if (memcmp(kp0, kp, sizeof kp) || memcmp(vp0, vp, sizeof vp))
            FAILF("case %d (%s): something was written", c, want);
        if (c == 11)
            for (int i = 0; i < 2 * T; i++) kp[i] = 1.0f; /* the slots' bytes, restored */
    }
    mha_ctx_free(ctx);
}

int main(void) {
    RUN(rows_land_at_their_slots);
    RUN(store_then_attend_as_kvcache_paged_appends);
    RUN(bad_arguments_nothing_written);
    return harness_report();
}
