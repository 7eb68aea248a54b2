/* test_rotary.c - mha_rotary against a float64 reference of the rotation (both pair layouts,
 * rotary dims from 2 to the head dim, positions given or NULL, contiguous and strided views,
 * float32, bfloat16 and float16: the reference from the same rounded inputs, the dimensions past
 * the rotary dim bitwise unchanged), and every bad argument with x unchanged. */
#include "harness.h"
#include "kernels/cvt.h"

enum {
    B = 2,
    H = 3,
    L = 5,
    D = 10,
    NP = 40
};

static uint64_t rng = 88172645463325252ull;
static float frand(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2 - 1;
}

#define get mha__load_f32 /* kernels/cvt.h: element i as float32, and back */
#define put mha__store_f32

/* x [B, H, L, D] over a buffer: contiguous, or (strided) of [B, L, H, D + 2] memory. */
static mha_tensor xview(void *buf, mha_dtype dt, int strided) {
    int64_t sh[4] = {B, H, L, D}, st[4] = {L * H * (D + 2), D + 2, H * (D + 2), 1};
    return mha_tensor_typed(buf, dt, 4, sh, strided ? st : NULL);
}
static int64_t at(int strided, int64_t b, int64_t h, int64_t i, int64_t x) {
    return strided ? ((b * L + i) * H + h) * (D + 2) + x : ((b * H + h) * L + i) * D + x;
}

TEST(rotary_matches_float64) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    static float cosb[NP * D / 2], sinb[NP * D / 2];
    static float buf[B * L * H * (D + 2)], before[B * L * H * (D + 2)];
    int32_t pos[B * L];
    const mha_dtype dts[3] = {MHA_DTYPE_F32, MHA_DTYPE_BF16, MHA_DTYPE_F16};
    for (int di = 0; di < 3; di++)
        for (int half = 1; half <= D / 2; half += 2)
            for (int inter = 0; inter < 2; inter++)
                for (int strided = 0; strided < 2; strided++)
                    for (int given = 0; given < 2; given++) {
                        const mha_dtype dt = dts[di];
                        const int64_t shc[2] = {NP, half};
                        for (int p = 0; p < NP; p++)
                            for (int k = 0; k < half; k++) {
                                double th = p * pow(10000.0, -2.0 * k / (2 * half));
                                cosb[p * half + k] = (float)cos(th),
                                                sinb[p * half + k] = (float)sin(th);
                            }
                        mha_tensor tc = mha_tensor_make(cosb, 2, shc),
                                   ts = mha_tensor_make(sinb, 2, shc);
                        for (size_t i = 0; i < sizeof buf / sizeof buf[0]; i++)
                            put(dt, buf, (int64_t)i, frand());
                        memcpy(before, buf, sizeof buf);
                        for (int i = 0; i < B * L; i++) pos[i] = (int32_t)((i * 7 + 3) % NP);
                        mha_tensor x = xview(buf, dt, strided);
                        ASSERT_OK(ctx, mha_rotary(ctx, &x, &tc, &ts, given ? pos : NULL, inter));
                        const double tol = dt == MHA_DTYPE_F32    ? 1e-6
                                           : dt == MHA_DTYPE_BF16 ? 0x1p-8
                                                                  : 0x1p-11;
                        for (int64_t b = 0; b < B; b++)
                            for (int64_t h = 0; h < H; h++)
                                for (int64_t i = 0; i < L; i++) {
                                    const int64_t p = given ? pos[b * L + i] : i;
                                    for (int64_t x0 = 0; x0 < D; x0++) {
                                        const int64_t j = at(strided, b, h, i, x0);
                                        const double got = get(dt, buf, j);
                                        double want = get(dt, before, j), scale = 0;
                                        if (x0 < 2 * half) {
                                            const int64_t k = inter ? x0 / 2 : x0 % half;
                                            const int first = inter ? x0 % 2 == 0 : x0 < half;
                                            const int64_t o = inter
                                                                  ? (first ? x0 + 1 : x0 - 1)
                                                                  : (first ? x0 + half : x0 - half);
                                            const double a = get(dt, before, j);
                                            const double e =
                                                get(dt, before, at(strided, b, h, i, o));
                                            const double c = cosb[p * half + k],
                                                         s = sinb[p * half + k];
                                            want = first ? a * c - e * s : e * s + a * c;
                                            scale = fabs(a) + fabs(e); /* the terms' size */
                                        }
                                        if (fabs(got - want) > tol * scale ||
                                            (x0 >= 2 * half && got != want)) {
                                            FAILF("%s half %d inter %d strided %d given %d: "
                                                  "x[%lld][%lld][%lld][%lld] = %.9g, expected %.9g",
                                                  mha_dtype_name(dt), half, inter, strided, given,
                                                  (long long)b, (long long)h, (long long)i,
                                                  (long long)x0, got, want);
                                            goto done;
                                        }
                                    }
                                }
                        if (strided) /* the padding between rows untouched */
                            for (int64_t r = 0; r < B * L * H; r++)
                                for (int64_t x0 = D; x0 < D + 2; x0++)
                                    ASSERT_TRUE(get(dt, buf, r * (D + 2) + x0) ==
                                                get(dt, before, r * (D + 2) + x0));
                    }
done:
    mha_ctx_free(ctx);
}

TEST(rotary_bad_arguments_leave_x) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    static float cosb[NP * D], sinb[NP * D], buf[B * H * L * D], before[B * H * L * D];
    for (int i = 0; i < B * H * L * D; i++) buf[i] = frand();
    memcpy(before, buf, sizeof buf);
    int32_t pos[B * L];
    for (int i = 0; i < B * L; i++) pos[i] = i;
    for (int k = 0; k < 7; k++) {
        int64_t shc[2] = {NP, 2}, shs[2] = {NP, 2}, shx[4] = {B, H, L, D};
        const int32_t *pp = pos;
        const char *want = NULL;
        mha_tensor x = mha_tensor_make(buf, 4, shx);
        switch (k) {
        case 0: shc[1] = shs[1] = 0, want = "cos.shape[1]: got 0, expected 1 .. 5"; break;
        case 1: shc[1] = shs[1] = 6, want = "cos.shape[1]: got 6, expected 1 .. 5"; break;
        case 2: shs[0] = NP - 1, want = "sin.shape[0]: got 39, expected 40"; break;
        case 3:
            pos[1 * L + 2] = NP, want = "positions[1][2]: got 40, expected a position in [0, 40)";
            break;
        case 4: pos[3] = -1, want = "positions[0][3]: got -1"; break;
        case 5: shc[0] = shs[0] = 3, pp = NULL, want = "token (positions NULL)[0][3]: got 3"; break;
        case 6: x.stride[1] = 0, want = "x: got a view whose elements share memory"; break;
        }
        mha_tensor tc = mha_tensor_make(cosb, 2, shc), ts = mha_tensor_make(sinb, 2, shs);
        ASSERT_TRUE(mha_rotary(ctx, &x, &tc, &ts, pp, 0) != MHA_OK);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_rotary: ");
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), want);
        ASSERT_TRUE(memcmp(buf, before, sizeof buf) == 0);
        for (int i = 0; i < B * L; i++) pos[i] = i;
    }
    /* x overlapping cos */
    int64_t shx[4] = {1, 1, 1, 4}, shc[2] = {4, 2};
    mha_tensor x = mha_tensor_make(cosb, 4, shx), tc = mha_tensor_make(cosb, 2, shc);
    ASSERT_TRUE(mha_rotary(ctx, &x, &tc, &tc, NULL, 1) == MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_rotary: x overlaps cos");
    mha_ctx_free(ctx);
}

int main(void) {
    RUN(rotary_matches_float64);
    RUN(rotary_bad_arguments_leave_x);
    return harness_report();
}
