/* test_golden.c - the module against PyTorch: every tests/golden/<case>.safetensors (written by
 * tests/golden/gen_golden.py, see tests/golden/README.md), forward and backward, on every ISA.
 *
 * Per file and ISA: mha_module_create_from_file (the parameters are in the same file), the mask
 * built from the stored tensors, forward with weights, backward with the stored dout, then out,
 * weights, the input gradients and every parameter gradient compared with float64 expectations.
 * Acceptance: per tensor, err = max|got - want| / max(max|want|, tiny) <= 1e-5, and elementwise
 * |got - want| <= 1e-5 * (|want| + max|want|); no NaN or Inf anywhere. Output buffers start as
 * NaN, so an element the library never writes fails too.
 *
 * Prints one line per case and tensor with its largest relative error over the ISAs, and a
 * summary line with the largest over everything. */
#include "harness.h"
#include <dirent.h>

#define GOLDEN_RTOL 1e-5
#define GOLDEN_TINY 1e-30
#define GOLDEN_MAX_FILES 256
#define GOLDEN_MAX_TENSORS 24

typedef struct {
    char name[64];
    double err;
    const char *isa;
} golden_rec;

static golden_rec case_recs[GOLDEN_MAX_TENSORS];
static int case_nrecs;
static double worst_err = -1;
static char worst_where[192];
static int n_checked_tensors;

static void record(const char *casename, const char *tensor, const char *isa, double err) {
    int i;
    for (i = 0; i < case_nrecs; i++)
        if (strcmp(case_recs[i].name, tensor) == 0) break;
    if (i == case_nrecs) {
        if (case_nrecs == GOLDEN_MAX_TENSORS) return;
        snprintf(case_recs[i].name, sizeof case_recs[i].name, "%s", tensor);
        case_recs[i].err = -1;
        case_nrecs++;
    }
    /* NaN compares false: keep it visible as +inf */
    if (isnan(err)) err = INFINITY;
    if (err > case_recs[i].err) case_recs[i].err = err, case_recs[i].isa = isa;
    if (err > worst_err) {
        worst_err = err;
        snprintf(worst_where, sizeof worst_where, "%s / %s / %s", casename, tensor, isa);
    }
    n_checked_tensors++;
}

/* The stored array name, which must exist with dtype dt (FAILF otherwise). */
static const mha_array *need(const mha_st *st, const char *name, mha_dtype dt) {
    const mha_array *a = mha_st_find(st, name);
    if (!a) {
        FAILF("fixture has no tensor \"%s\"", name);
        return NULL;
    }
    if (a->dtype != dt) {
        FAILF("fixture tensor \"%s\": dtype %s, expected %s", name, mha_dtype_name(a->dtype),
              mha_dtype_name(dt));
        return NULL;
    }
    return a;
}

/* An optional tensor: NULL if absent, FAILF (and *bad = 1) if present with another dtype. */
static const mha_array *maybe(const mha_st *st, const char *name, mha_dtype dt, int *bad) {
    const mha_array *a = mha_st_find(st, name);
    if (a && a->dtype != dt) {
        FAILF("fixture tensor \"%s\": dtype %s, expected %s", name, mha_dtype_name(a->dtype),
              mha_dtype_name(dt));
        *bad = 1;
        return NULL;
    }
    return a;
}

static int cfg_i32(const mha_st *st, const char *name, int *out) {
    const mha_array *a = need(st, name, MHA_DTYPE_I32);
    if (!a || mha_array_numel(a) != 1) return 0;
    *out = ((const int32_t *)a->data)[0];
    return 1;
}

static mha_tensor view_f32(const mha_array *a) {
    return mha_tensor_make((float *)a->data, a->ndim, a->shape);
}

/* A NaN-filled float buffer with the shape of a (the expected array). */
static float *nan_buffer(const mha_array *a, mha_tensor *t) {
    int64_t n = mha_array_numel(a);
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!p) return NULL;
    for (int64_t i = 0; i < n; i++) p[i] = NAN;
    *t = mha_tensor_make(p, a->ndim, a->shape);
    return p;
}

/* Copies a (possibly strided) view into a contiguous buffer of its numel floats. */
static void gather(const mha_tensor *t, float *dst) {
    int64_t n = mha_tensor_numel(t), idx[MHA_MAX_DIMS] = {0};
    for (int64_t i = 0; i < n; i++) {
        int64_t off = 0;
        for (int d = 0; d < t->ndim; d++) off += idx[d] * t->stride[d];
        dst[i] = t->data[off];
        for (int d = t->ndim - 1; d >= 0; d--) {
            if (++idx[d] < t->shape[d]) break;
            idx[d] = 0;
        }
    }
}

static int same_shape(const mha_tensor *t, const mha_array *a) {
    if (t->ndim != a->ndim) return 0;
    for (int d = 0; d < a->ndim; d++)
        if (t->shape[d] != a->shape[d]) return 0;
    return 1;
}

/* Compares got (contiguous, numel of want) with the F64 array want. Returns 1 when within
 * tolerance; records the relative error either way. */
static int compare(const char *casename, const char *isa, const char *tensor, const float *got,
                   const mha_array *want) {
    int64_t n = mha_array_numel(want);
    const double *w = (const double *)want->data;
    double maxw = 0, maxd = 0;
    int finite = 1;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) finite = 0;
        double d = fabs((double)got[i] - w[i]);
        if (fabs(w[i]) > maxw) maxw = fabs(w[i]);
        if (d > maxd || isnan(d)) maxd = isnan(d) ? INFINITY : d;
    }
    double err = finite ? maxd / (maxw > GOLDEN_TINY ? maxw : GOLDEN_TINY) : INFINITY;
    record(casename, tensor, isa, err);
    char what[160];
    snprintf(what, sizeof what, "%s [%s] %s", casename, isa, tensor);
    int ok = harness_near(__FILE__, __LINE__, what, got, w, n, GOLDEN_RTOL, GOLDEN_RTOL * maxw);
    if (ok && !(err <= GOLDEN_RTOL)) {
        FAILF("%s: relative error %.3g > %g", what, err, GOLDEN_RTOL);
        ok = 0;
    }
    return ok;
}

/* Everything a case needs, read once from the fixture. */
typedef struct {
    const char *name;
    const char *path;
    const mha_st *st;
    int num_heads, average_weights;
    float scale;
    mha_mask mask;
    const mha_array *query, *key, *value, *dout;
    const mha_array *e_out, *e_w, *e_gq, *e_gk, *e_gv;
    int n_expect_param_grads; /* expect.grad.* other than query/key/value */
} golden_case;

static int read_case(golden_case *c) {
    const mha_st *st = c->st;
    int causal = 0, batched = 0, bad = 0;
    if (!cfg_i32(st, "cfg.num_heads", &c->num_heads) || !cfg_i32(st, "cfg.causal", &causal) ||
        !cfg_i32(st, "cfg.average_weights", &c->average_weights) ||
        !cfg_i32(st, "cfg.attn_batched", &batched))
        return 0;
    const mha_array *sc = need(st, "cfg.scale", MHA_DTYPE_F32);
    if (!sc) return 0;
    c->scale = ((const float *)sc->data)[0];

    c->mask = mha_mask_default();
    c->mask.causal = (mha_causal)causal;
    c->mask.attn_batched = batched;
    const mha_array *kpm = maybe(st, "key_padding_mask", MHA_DTYPE_BOOL, &bad);
    const mha_array *kl = maybe(st, "key_lengths", MHA_DTYPE_I32, &bad);
    if (kpm) c->mask.key_padding = (const uint8_t *)kpm->data;
    if (kl) c->mask.key_lengths = (const int32_t *)kl->data;
    const mha_array *am = mha_st_find(st, "attn_mask");
    if (am && am->dtype == MHA_DTYPE_BOOL) c->mask.attn_bool = (const uint8_t *)am->data;
    else if (am && am->dtype == MHA_DTYPE_F32) c->mask.attn_float = (const float *)am->data;
    else if (am) {
        FAILF("fixture tensor \"attn_mask\": dtype %s", mha_dtype_name(am->dtype));
        return 0;
    }

    c->query = need(st, "query", MHA_DTYPE_F32);
    c->key = maybe(st, "key", MHA_DTYPE_F32, &bad);
    c->value = maybe(st, "value", MHA_DTYPE_F32, &bad);
    c->dout = need(st, "dout", MHA_DTYPE_F32);
    c->e_out = need(st, "expect.out", MHA_DTYPE_F64);
    c->e_w = need(st, "expect.weights", MHA_DTYPE_F64);
    c->e_gq = need(st, "expect.grad.query", MHA_DTYPE_F64);
    c->e_gk = maybe(st, "expect.grad.key", MHA_DTYPE_F64, &bad);
    c->e_gv = maybe(st, "expect.grad.value", MHA_DTYPE_F64, &bad);
    if (bad || !c->query || !c->dout || !c->e_out || !c->e_w || !c->e_gq) return 0;
    if (!c->key != !c->value || !c->key != !c->e_gk || !c->value != !c->e_gv) {
        FAILF("fixture: key, value and their expected gradients must come together");
        return 0;
    }
    c->n_expect_param_grads = 0;
    for (int i = 0; i < mha_st_count(st); i++) {
        const char *n = mha_st_name(st, i);
        if (strncmp(n, "expect.grad.", 12) == 0 && strcmp(n + 12, "query") != 0 &&
            strcmp(n + 12, "key") != 0 && strcmp(n + 12, "value") != 0)
            c->n_expect_param_grads++;
    }
    return 1;
}

/* One case on the context's current ISA. */
static void run_isa(mha_ctx *ctx, const golden_case *c) {
    const char *isa = mha_isa_name(mha_ctx_isa(ctx));
    mha_module *m = NULL;
    float *out = NULL, *w = NULL, *dq = NULL, *dk = NULL, *dv = NULL, *tmp = NULL;
    mha_tensor t_out, t_w, t_dq, t_dk, t_dv;
    mha_status s = mha_module_create_from_file(ctx, c->path, NULL, c->num_heads, &m);
    if (s != MHA_OK) {
        FAILF("%s [%s] mha_module_create_from_file: %s: %s", c->name, isa, mha_status_str(s),
              mha_ctx_errmsg(ctx));
        goto done;
    }
    if (mha_module_param_count(m) != c->n_expect_param_grads) {
        FAILF("%s [%s] module has %d parameters, fixture has %d expected parameter gradients",
              c->name, isa, mha_module_param_count(m), c->n_expect_param_grads);
        goto done;
    }
    out = nan_buffer(c->e_out, &t_out);
    w = nan_buffer(c->e_w, &t_w);
    dq = nan_buffer(c->e_gq, &t_dq);
    if (c->e_gk) dk = nan_buffer(c->e_gk, &t_dk);
    if (c->e_gv) dv = nan_buffer(c->e_gv, &t_dv);
    if (!out || !w || !dq || (c->e_gk && !dk) || (c->e_gv && !dv)) {
        FAILF("out of memory");
        goto done;
    }
    mha_tensor q = view_f32(c->query), k = q, v = q, dout = view_f32(c->dout);
    if (c->key) k = view_f32(c->key), v = view_f32(c->value);

    mha_forward_opts fo = mha_forward_opts_default();
    fo.scale = c->scale;
    fo.average_weights = c->average_weights;
    fo.training = 0;
    fo.save_for_backward = 1;
    s = mha_module_forward(ctx, m, &fo, &q, c->key ? &k : NULL, c->value ? &v : NULL, &c->mask,
                           &t_out, &t_w);
    if (s != MHA_OK) {
        FAILF("%s [%s] mha_module_forward: %s: %s", c->name, isa, mha_status_str(s),
              mha_ctx_errmsg(ctx));
        goto done;
    }
    compare(c->name, isa, "out", out, c->e_out);
    compare(c->name, isa, "weights", w, c->e_w);

    s = mha_module_backward(ctx, m, &dout, &t_dq, dk ? &t_dk : NULL, dv ? &t_dv : NULL);
    if (s != MHA_OK) {
        FAILF("%s [%s] mha_module_backward: %s: %s", c->name, isa, mha_status_str(s),
              mha_ctx_errmsg(ctx));
        goto done;
    }
    compare(c->name, isa, "grad.query", dq, c->e_gq);
    if (dk) compare(c->name, isa, "grad.key", dk, c->e_gk);
    if (dv) compare(c->name, isa, "grad.value", dv, c->e_gv);

    for (int i = 0; i < mha_module_param_count(m); i++) {
        const char *pn = mha_module_param_name(m, i);
        char ename[96], gname[96];
        snprintf(ename, sizeof ename, "expect.grad.%s", pn ? pn : "(null)");
        snprintf(gname, sizeof gname, "grad.%s", pn ? pn : "(null)");
        const mha_array *want = need(c->st, ename, MHA_DTYPE_F64);
        const mha_array *val = need(c->st, pn ? pn : "(null)", MHA_DTYPE_F32);
        mha_tensor tv, tg;
        if (!want || !val) continue;
        s = mha_module_param(ctx, m, pn, &tv, &tg);
        if (s != MHA_OK) {
            FAILF("%s [%s] mha_module_param(%s): %s: %s", c->name, isa, pn, mha_status_str(s),
                  mha_ctx_errmsg(ctx));
            continue;
        }
        if (!same_shape(&tg, want) || !same_shape(&tv, want)) {
            FAILF("%s [%s] parameter %s: shape differs from the fixture's", c->name, isa, pn);
            continue;
        }
        int64_t n = mha_array_numel(want);
        free(tmp);
        tmp = malloc((size_t)n * sizeof(float));
        if (!tmp) {
            FAILF("out of memory");
            goto done;
        }
        /* the loaded values are the file's, bit for bit */
        gather(&tv, tmp);
        if (memcmp(tmp, val->data, (size_t)n * sizeof(float)) != 0)
            FAILF("%s [%s] parameter %s: loaded values differ from the file", c->name, isa, pn);
        gather(&tg, tmp);
        compare(c->name, isa, gname, tmp, want);
    }
done:
    free(tmp);
    free(out);
    free(w);
    free(dq);
    free(dk);
    free(dv);
    mha_module_free(m);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int list_fixtures(const char *dir, char **names, int cap) {
    DIR *d = opendir(dir);
    int n = 0;
    if (!d) return -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < cap) {
        size_t len = strlen(e->d_name), sl = strlen(".safetensors");
        if (len > sl && strcmp(e->d_name + len - sl, ".safetensors") == 0) {
            char *s = malloc(len + 1);
            if (!s) break;
            memcpy(s, e->d_name, len + 1);
            names[n++] = s;
        }
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    return n;
}

static void run_file(const char *dir, const char *file) {
    char path[1024], name[256];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    snprintf(name, sizeof name, "%.*s", (int)(strlen(file) - strlen(".safetensors")), file);
    mha_ctx *ctx = NULL;
    mha_st *st = NULL;
    case_nrecs = 0;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_status s = mha_st_load(ctx, path, &st);
    if (s != MHA_OK) {
        FAILF("mha_st_load(%s): %s: %s", path, mha_status_str(s), mha_ctx_errmsg(ctx));
        mha_ctx_free(ctx);
        return;
    }
    golden_case c;
    memset(&c, 0, sizeof c);
    c.name = name;
    c.path = path;
    c.st = st;
    if (read_case(&c)) {
        int n_isa = 0;
        FOR_EACH_ISA(ctx) {
            run_isa(ctx, &c);
            n_isa++;
        }
        if (n_isa == 0) FAILF("no ISA could be selected");
    }
    for (int i = 0; i < case_nrecs; i++)
        printf("golden %-24s %-28s max rel err %.2e  (worst on %s)\n", name, case_recs[i].name,
               case_recs[i].err, case_recs[i].isa);
    mha_st_free(st);
    mha_ctx_free(ctx);
}

/* The comparison is live: the same fixture with out_proj.bias[0] nudged by 3e-4 (about 30x the
 * tolerance, relative to max|out| ~ 1) must fail the tolerance on the output. */
TEST(golden_detects_a_perturbed_parameter) {
    char path[1024];
    snprintf(path, sizeof path, "%s/golden/no_mask.safetensors", MHA_TEST_DIR);
    mha_ctx *ctx = NULL;
    mha_st *st = NULL;
    mha_module *m = NULL;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    ASSERT_OK(ctx, mha_st_load(ctx, path, &st));
    golden_case c;
    memset(&c, 0, sizeof c);
    c.name = "no_mask";
    c.path = path;
    c.st = st;
    ASSERT_TRUE(read_case(&c));
    ASSERT_OK(ctx, mha_module_create_from_file(ctx, path, NULL, c.num_heads, &m));
    mha_tensor wv;
    ASSERT_OK(ctx, mha_module_param(ctx, m, "out_proj.bias", &wv, NULL));
    wv.data[0] += 3e-4f;
    mha_tensor q = view_f32(c.query), t_out;
    float *out = nan_buffer(c.e_out, &t_out);
    ASSERT_TRUE(out != NULL);
    mha_forward_opts fo = mha_forward_opts_default();
    ASSERT_OK(ctx, mha_module_forward(ctx, m, &fo, &q, NULL, NULL, &c.mask, &t_out, NULL));
    double maxw = 0, maxd = 0;
    const double *want = (const double *)c.e_out->data;
    for (int64_t i = 0; i < mha_array_numel(c.e_out); i++) {
        if (fabs(want[i]) > maxw) maxw = fabs(want[i]);
        if (fabs(out[i] - want[i]) > maxd) maxd = fabs(out[i] - want[i]);
    }
    free(out);
    mha_module_free(m);
    mha_st_free(st);
    mha_ctx_free(ctx);
    ASSERT_TRUE(maxd / maxw > 10 * GOLDEN_RTOL);
    ASSERT_TRUE(maxd / maxw < 1e-3); /* and nothing else changed */
}

int main(void) {
    const char *dir = MHA_TEST_DIR "/golden";
    char *files[GOLDEN_MAX_FILES];
    int n = list_fixtures(dir, files, GOLDEN_MAX_FILES);
    harness_cur = "golden";
    if (n <= 0) {
        FAILF("no fixtures (*.safetensors) in %s: run build/venv/bin/python "
              "tests/golden/gen_golden.py",
              dir);
        harness_failed++;
        return harness_report();
    }
    printf("ISAs:");
    for (int i = MHA_ISA_GENERIC; i <= MHA_ISA_AVX512; i++)
        if (mha_isa_supported((mha_isa)i)) printf(" %s", mha_isa_name((mha_isa)i));
    printf("; %d fixtures in %s\n", n, dir);
    for (int i = 0; i < n; i++) {
        char label[256];
        snprintf(label, sizeof label, "golden/%s", files[i]);
        harness_cur = label;
        harness_cur_failed = 0;
        run_file(dir, files[i]);
        if (harness_cur_failed) {
            harness_failed++;
            printf("FAIL %s\n", label);
        } else {
            harness_passed++;
            printf("ok   %s\n", label);
        }
        fflush(stdout);
        free(files[i]);
    }
    RUN(golden_detects_a_perturbed_parameter);
    printf("golden summary: %d fixtures, %d tensor comparisons, largest relative error %.2e "
           "(%s), tolerance %g\n",
           n, n_checked_tensors, worst_err, worst_where, GOLDEN_RTOL);
    return harness_report();
}
