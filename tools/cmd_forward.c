/* cmd_forward.c - `mha forward` and `mha backward`: run an nn.MultiheadAttention layer exported
 * from PyTorch (a safetensors state_dict) on .npy inputs, and its gradients.
 *
 *   mha forward  --weights W.safetensors --heads H --query Q.npy [--key K.npy --value V.npy]
 *                [--causal | --causal-bottom-right] [--key-padding-mask M.npy]
 *                [--attn-mask A.npy] [--scale X] --out Y.npy [--attn-out A.npy [--per-head]]
 *                [--threads N] [--isa NAME]
 *   mha backward <the same inputs> --grad-out DY.npy --grads-out G.safetensors [--out Y.npy]
 *
 * Everything is loaded and checked, then computed, and only then written (each file through the
 * library's temporary file + rename): a failed run leaves no output behind and never damages
 * an earlier one. Usage errors exit 1, runtime failures exit 2, each with one "mha: error:" line. */
#include "cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_help(FILE *f, int backward) {
    if (!backward)
        fputs("usage: mha forward --weights W.safetensors --heads H --query Q.npy --out Y.npy "
              "[options]\n\n"
              "Runs torch.nn.MultiheadAttention(batch_first=True) with the parameters of W on\n"
              "the inputs, and writes its output (and, on request, its attention weights).\n",
              f);
    else
        fputs("usage: mha backward --weights W.safetensors --heads H --query Q.npy "
              "--grad-out DY.npy\n"
              "                    --grads-out G.safetensors [options]\n\n"
              "Runs the forward of torch.nn.MultiheadAttention(batch_first=True), then its\n"
              "backward with the output gradient DY, and writes every gradient to G.\n",
              f);
    fputs("\nrequired:\n"
          "  --weights W.safetensors  the layer's state_dict (in_proj_weight or q/k/v_proj_weight,\n"
          "                           in_proj_bias, out_proj.weight, out_proj.bias): E, kdim, vdim\n"
          "                           and bias are read from the tensors' shapes\n"
          "  --heads H                number of heads (H > 0, E divisible by H)\n"
          "  --query Q.npy            float32 [B, L, E] (batch first), or unbatched [L, E]\n",
          f);
    if (!backward)
        fputs("  --out Y.npy              where to write the output, float32 [B, L, E]\n", f);
    else
        fputs("  --grad-out DY.npy        gradient of the output, float32 [B, L, E] (as the query)\n"
              "  --grads-out G.safetensors  where to write the gradients: \"query\" (for\n"
              "                           self-attention the whole input gradient), \"key\" and\n"
              "                           \"value\" when they were given, and one per parameter\n"
              "                           under the parameter's own name (in_proj_weight, ...)\n",
              f);
    fputs("\ninputs (optional):\n"
          "  --key K.npy              float32 [B, S, kdim] or [S, kdim]; needs --value\n"
          "  --value V.npy            float32 [B, S, vdim] or [S, vdim]; needs --key\n"
          "                           (without both: self-attention, key = value = query)\n"
          "\nmasks (optional, all of them combine; a row with every key masked gives 0):\n"
          "  --causal                 PyTorch's causal mask, top-left: query i sees keys j <= i\n"
          "  --causal-bottom-right    FlashAttention's causal mask: keys j <= i + (S - L)\n"
          "  --key-padding-mask M.npy bool [B, S] (unbatched [S]); true = ignore that key\n"
          "  --attn-mask A.npy        bool (true = NOT allowed) or float32 (added to the scaled\n"
          "                           scores), [L, S] or [B*H, L, S] (unbatched [H, L, S])\n"
          "\nother options:\n"
          "  --scale X                score scale instead of 1/sqrt(E/H)\n",
          f);
    if (backward)
        fputs("  --out Y.npy              also write the forward output, float32 [B, L, E]\n", f);
    fputs("  --attn-out A.npy         also write the attention weights, float32 [B, L, S]\n"
          "                           (averaged over heads)\n"
          "  --per-head               with --attn-out: one map per head, [B, H, L, S]\n"
          "  --threads N              threads to use (0 = all cores, the default)\n"
          "  --isa NAME               kernels: auto (default), generic, avx2 or avx512\n"
          "  --help                   this text\n"
          "\nexit status: 0 success, 1 usage error, 2 runtime failure (files, shapes, dtypes)\n"
          "\nexample:\n",
          f);
    if (!backward)
        fputs("  mha forward --weights layer.safetensors --heads 8 --query x.npy --causal \\\n"
              "      --out y.npy --attn-out w.npy --per-head\n"
              "  mha forward --weights cross.safetensors --heads 4 --query q.npy --key k.npy \\\n"
              "      --value v.npy --key-padding-mask pad.npy --out y.npy\n",
              f);
    else
        fputs("  mha backward --weights layer.safetensors --heads 8 --query x.npy --causal \\\n"
              "      --grad-out dy.npy --grads-out grads.safetensors\n",
              f);
}

/* Everything one run holds; released by run_free whatever happened. */
typedef struct {
    mha_ctx *ctx;
    mha_module *m;
    mha_array query, key, value, kpm, amask, dout;
    mha_array out, weights, dquery, dkey, dvalue;
    mha_st *grads;
} run_state;

static void run_free(run_state *r) {
    mha_array *arrs[] = {&r->query, &r->key, &r->value, &r->kpm, &r->amask, &r->dout,
                         &r->out, &r->weights, &r->dquery, &r->dkey, &r->dvalue};
    for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++) mha_array_free(arrs[i]);
    mha_st_free(r->grads);
    mha_module_free(r->m);
    mha_ctx_free(r->ctx);
}

static int all_positive(const mha_array *a) {
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] < 1) return 0;
    return 1;
}

/* Checks an input of the layer: [B, N, feat] when batched, [N, feat] when not. */
static int check_input(const char *opt, const mha_array *a, int batched, int64_t batch,
                       int64_t feat, const char *feat_name) {
    char got[96];
    cli_shape_str(got, sizeof got, a->ndim, a->shape);
    int ok = a->ndim == (batched ? 3 : 2) && a->shape[a->ndim - 1] == feat && all_positive(a) &&
             (!batched || batch < 0 || a->shape[0] == batch);
    if (ok) return 0;
    if (batch < 0)
        return cli_fail("%s: shape %s, expected [B, L, %lld] or [L, %lld] (%s %lld from "
                        "--weights, B and L at least 1)",
                        opt, got, (long long)feat, (long long)feat, feat_name, (long long)feat);
    if (batched)
        return cli_fail("%s: shape %s, expected [%lld, S, %lld] (batch of --query, %s %lld "
                        "from --weights)",
                        opt, got, (long long)batch, (long long)feat, feat_name, (long long)feat);
    return cli_fail("%s: shape %s, expected [S, %lld] (unbatched like --query, %s %lld from "
                    "--weights)",
                    opt, got, (long long)feat, feat_name, (long long)feat);
}

static int run(int argc, char **argv, int backward) {
    const char *weights = NULL, *query = NULL, *key = NULL, *value = NULL, *kpm = NULL,
               *amask = NULL, *out = NULL, *attn_out = NULL, *grad_out = NULL,
               *grads_out = NULL, *isa = NULL;
    long long heads = 0, threads = 0;
    double scale = 0;
    int causal = 0, causal_br = 0, per_head = 0;
    cli_opt opts[] = {
        {"--weights", CLI_OPT_STRING, &weights, 0},
        {"--heads", CLI_OPT_INT, &heads, 0},
        {"--query", CLI_OPT_STRING, &query, 0},
        {"--key", CLI_OPT_STRING, &key, 0},
        {"--value", CLI_OPT_STRING, &value, 0},
        {"--causal", CLI_OPT_FLAG, &causal, 0},
        {"--causal-bottom-right", CLI_OPT_FLAG, &causal_br, 0},
        {"--key-padding-mask", CLI_OPT_STRING, &kpm, 0},
        {"--attn-mask", CLI_OPT_STRING, &amask, 0},
        {"--scale", CLI_OPT_FLOAT, &scale, 0},
        {"--out", CLI_OPT_STRING, &out, 0},
        {"--attn-out", CLI_OPT_STRING, &attn_out, 0},
        {"--per-head", CLI_OPT_FLAG, &per_head, 0},
        {"--threads", CLI_OPT_INT, &threads, 0},
        {"--isa", CLI_OPT_STRING, &isa, 0},
        {"--grad-out", CLI_OPT_STRING, &grad_out, 0},  /* backward only: removed below */
        {"--grads-out", CLI_OPT_STRING, &grads_out, 0},
    };
    int nopts = (int)(sizeof opts / sizeof opts[0]) - (backward ? 0 : 2);
    const char *cmd = argv[0];
    char hint[128];
    snprintf(hint, sizeof hint, "mha %s --help lists the options", cmd);

    /* --- the command line: everything that can be told without reading a file (exit 1) --- */
    int rc = cli_parse(argc, argv, opts, nopts);
    if (rc == CLI_HELP) {
        print_help(stdout, backward);
        return CLI_EXIT_OK;
    }
    if (rc) return rc;
    if (!weights) return cli_missing(cmd, "--weights");
    if (!cli_find(opts, nopts, "--heads")->seen) return cli_missing(cmd, "--heads");
    if (!query) return cli_missing(cmd, "--query");
    if (!backward && !out) return cli_missing(cmd, "--out");
    if (backward && !grad_out) return cli_missing(cmd, "--grad-out");
    if (backward && !grads_out) return cli_missing(cmd, "--grads-out");
    if (!key != !value)
        return cli_usage_error("give both --key and --value for cross-attention, or neither "
                               "for self-attention",
                               "%s given without %s", key ? "--key" : "--value",
                               key ? "--value" : "--key");
    if (per_head && !attn_out)
        return cli_usage_error("--per-head chooses the layout of the --attn-out file",
                               "--per-head needs --attn-out");
    if (causal && causal_br)
        return cli_usage_error(NULL, "--causal and --causal-bottom-right exclude each other");
    mha_isa isa_val;
    if (isa && !cli_isa_parse(isa, &isa_val))
        return cli_usage_error("--isa takes auto, generic, avx2 or avx512",
                               "--isa: unknown kernel path \"%s\"", isa);

    /* --- values the command line cannot settle (exit 2 from here on) --- */
    if (!isfinite(scale) || scale < 0)
        return cli_fail("--scale: got %g, expected a positive number", scale);
    if (cli_find(opts, nopts, "--scale")->seen && scale == 0)
        return cli_fail("--scale: got 0, expected a positive number");

    run_state r;
    memset(&r, 0, sizeof r);
    rc = cli_ctx_create(cli_find(opts, nopts, "--threads")->seen ? &threads : NULL, isa, &r.ctx);
    if (rc) return rc;
    mha_ctx *ctx = r.ctx;
    char got[96], want[96];

    /* Load and check every input before computing anything. */
    if ((rc = cli_load_module(ctx, weights, heads, &r.m))) goto done;
    const mha_config *cfg = mha_module_config(r.m);
    const int64_t E = cfg->embed_dim, H = cfg->num_heads;
    const int64_t kdim = cfg->kdim ? cfg->kdim : E, vdim = cfg->vdim ? cfg->vdim : E;
    if (!key && (kdim != E || vdim != E)) {
        rc = cli_fail("--key/--value: missing: the layer in --weights has kdim %lld and vdim "
                      "%lld (not E = %lld), so self-attention is not possible",
                      (long long)kdim, (long long)vdim, (long long)E);
        goto done;
    }
    if ((rc = cli_load_f32(ctx, "--query", query, &r.query))) goto done;
    if ((rc = check_input("--query", &r.query, r.query.ndim == 3, -1, E, "embed_dim")))
        goto done;
    const int batched = r.query.ndim == 3;
    const int64_t B = batched ? r.query.shape[0] : 1, L = r.query.shape[batched ? 1 : 0];
    int64_t S = L;
    if (key) {
        if ((rc = cli_load_f32(ctx, "--key", key, &r.key))) goto done;
        if ((rc = check_input("--key", &r.key, batched, batched ? B : 0, kdim, "kdim")))
            goto done;
        if ((rc = cli_load_f32(ctx, "--value", value, &r.value))) goto done;
        if ((rc = check_input("--value", &r.value, batched, batched ? B : 0, vdim, "vdim")))
            goto done;
        S = r.key.shape[batched ? 1 : 0];
        if (r.value.shape[batched ? 1 : 0] != S) {
            rc = cli_fail("--value: %lld positions, expected %lld (the key length of --key)",
                          (long long)r.value.shape[batched ? 1 : 0], (long long)S);
            goto done;
        }
    }

    mha_mask mask = mha_mask_default();
    mask.causal = causal ? MHA_CAUSAL_TOP_LEFT : causal_br ? MHA_CAUSAL_BOTTOM_RIGHT
                                                           : MHA_CAUSAL_NONE;
    if (kpm) {
        if ((rc = cli_load_mask(ctx, "--key-padding-mask", kpm, 0, &r.kpm))) goto done;
        int64_t ws[2] = {B, S};
        int wn = batched ? 2 : 1;
        const int64_t *wp = batched ? ws : ws + 1;
        if (r.kpm.ndim != wn || memcmp(r.kpm.shape, wp, (size_t)wn * sizeof(int64_t))) {
            rc = cli_fail("--key-padding-mask: shape %s, expected %s (%s)",
                          cli_shape_str(got, sizeof got, r.kpm.ndim, r.kpm.shape),
                          cli_shape_str(want, sizeof want, wn, wp),
                          batched ? "batch, key length" : "key length");
            goto done;
        }
        mask.key_padding = (const uint8_t *)r.kpm.data;
    }
    if (amask) {
        if ((rc = cli_load_mask(ctx, "--attn-mask", amask, 1, &r.amask))) goto done;
        int64_t w2[2] = {L, S}, w3[3] = {batched ? B * H : H, L, S};
        if (r.amask.ndim == 2 && !memcmp(r.amask.shape, w2, sizeof w2)) {
            mask.attn_batched = 0;
        } else if (r.amask.ndim == 3 && !memcmp(r.amask.shape, w3, sizeof w3)) {
            mask.attn_batched = 1;
        } else {
            char want3[96];
            rc = cli_fail("--attn-mask: shape %s, expected %s (query length, key length) or "
                          "%s (%s, query length, key length)",
                          cli_shape_str(got, sizeof got, r.amask.ndim, r.amask.shape),
                          cli_shape_str(want, sizeof want, 2, w2),
                          cli_shape_str(want3, sizeof want3, 3, w3),
                          batched ? "batch*heads" : "heads");
            goto done;
        }
        if (r.amask.dtype == MHA_DTYPE_BOOL)
            mask.attn_bool = (const uint8_t *)r.amask.data;
        else
            mask.attn_float = (const float *)r.amask.data;
    }
    if (backward) {
        if ((rc = cli_load_f32(ctx, "--grad-out", grad_out, &r.dout))) goto done;
        int64_t ws[3] = {B, L, E};
        const int64_t *wp = batched ? ws : ws + 1;
        if (r.dout.ndim != r.query.ndim ||
            memcmp(r.dout.shape, wp, (size_t)r.query.ndim * sizeof(int64_t))) {
            rc = cli_fail("--grad-out: shape %s, expected %s (the output's shape)",
                          cli_shape_str(got, sizeof got, r.dout.ndim, r.dout.shape),
                          cli_shape_str(want, sizeof want, r.query.ndim, wp));
            goto done;
        }
    }

    /* --- compute --- */
    {
        int64_t os[3] = {B, L, E};
        if (mha_array_alloc(ctx, MHA_DTYPE_F32, r.query.ndim, batched ? os : os + 1, &r.out)) {
            rc = cli_fail_lib(ctx, NULL);
            goto done;
        }
        if (attn_out) {
            int64_t ws[4] = {B, H, L, S}, wa[3] = {B, L, S};
            const int64_t *wp = per_head ? (batched ? ws : ws + 1) : (batched ? wa : wa + 1);
            int wn = (per_head ? 4 : 3) - (batched ? 0 : 1);
            if (mha_array_alloc(ctx, MHA_DTYPE_F32, wn, wp, &r.weights)) {
                rc = cli_fail_lib(ctx, NULL);
                goto done;
            }
        }
    }
    mha_forward_opts fo = mha_forward_opts_default();
    fo.scale = (float)scale;
    fo.training = 0;
    fo.average_weights = !per_head;
    fo.save_for_backward = backward;
    mha_tensor tq = cli_array_tensor(&r.query), tk, tv, ty = cli_array_tensor(&r.out), tw;
    if (key) {
        tk = cli_array_tensor(&r.key);
        tv = cli_array_tensor(&r.value);
    }
    if (attn_out) tw = cli_array_tensor(&r.weights);
    if (mha_module_forward(ctx, r.m, &fo, &tq, key ? &tk : NULL, key ? &tv : NULL, &mask, &ty,
                           attn_out ? &tw : NULL) != MHA_OK) {
        rc = cli_fail_lib(ctx, NULL);
        goto done;
    }

    if (backward) {
        if (mha_array_alloc(ctx, MHA_DTYPE_F32, r.query.ndim, r.query.shape, &r.dquery) ||
            (key && mha_array_alloc(ctx, MHA_DTYPE_F32, r.key.ndim, r.key.shape, &r.dkey)) ||
            (key && mha_array_alloc(ctx, MHA_DTYPE_F32, r.value.ndim, r.value.shape,
                                    &r.dvalue))) {
            rc = cli_fail_lib(ctx, NULL);
            goto done;
        }
        mha_tensor tdy = cli_array_tensor(&r.dout), tdq = cli_array_tensor(&r.dquery), tdk, tdv;
        if (key) {
            tdk = cli_array_tensor(&r.dkey);
            tdv = cli_array_tensor(&r.dvalue);
        }
        mha_module_zero_grad(r.m);
        if (mha_module_backward(ctx, r.m, &tdy, &tdq, key ? &tdk : NULL, key ? &tdv : NULL) !=
            MHA_OK) {
            rc = cli_fail_lib(ctx, NULL);
            goto done;
        }
        /* Gather the gradients into one collection: inputs, then parameters by name. */
        if (mha_st_create(ctx, &r.grads) != MHA_OK ||
            mha_st_set(ctx, r.grads, "query", &r.dquery) != MHA_OK ||
            (key && (mha_st_set(ctx, r.grads, "key", &r.dkey) != MHA_OK ||
                     mha_st_set(ctx, r.grads, "value", &r.dvalue) != MHA_OK))) {
            rc = cli_fail_lib(ctx, NULL);
            goto done;
        }
        for (int i = 0; i < mha_module_param_count(r.m); i++) {
            const char *name = mha_module_param_name(r.m, i);
            mha_tensor g;
            mha_array ga;
            memset(&ga, 0, sizeof ga);
            if (mha_module_param(ctx, r.m, name, NULL, &g) != MHA_OK ||
                cli_tensor_to_array(ctx, &g, &ga) != MHA_OK ||
                mha_st_set(ctx, r.grads, name, &ga) != MHA_OK) {
                mha_array_free(&ga);
                rc = cli_fail_lib(ctx, NULL);
                goto done;
            }
            mha_array_free(&ga);
        }
    }

    /* --- write: only now that everything is computed --- */
    if (out && (rc = cli_save_npy(ctx, "--out", out, &r.out))) goto done;
    if (attn_out && (rc = cli_save_npy(ctx, "--attn-out", attn_out, &r.weights))) goto done;
    if (backward && (rc = cli_save_st(ctx, "--grads-out", grads_out, r.grads))) goto done;
    rc = CLI_EXIT_OK;
done:
    run_free(&r);
    return rc;
}

int mha_cmd_forward(int argc, char **argv) { return run(argc, argv, 0); }
int mha_cmd_backward(int argc, char **argv) { return run(argc, argv, 1); }
