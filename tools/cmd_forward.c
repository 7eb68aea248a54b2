/* cmd_forward.c - `mha forward` and `mha backward`: run an attention layer exported from PyTorch
 * (a safetensors state_dict of the layer or of a whole model: --prefix picks the layer) on .npy
 * inputs, and its gradients.
 *
 *   mha forward  --weights W.safetensors [--prefix P] [--heads H] --query Q.npy
 *                [--key K.npy --value V.npy]
 *                [--causal | --causal-bottom-right] [--key-padding-mask M.npy]
 *                [--attn-mask A.npy] [--scale X] --out Y.npy [--attn-out A.npy [--per-head]]
 *                [--dtype f32|bf16|f16] [--threads N] [--isa NAME]
 *   mha backward <the same inputs> --grad-out DY.npy --grads-out G.safetensors [--out Y.npy]
 *
 * Every output is declared first, everything is loaded and checked, then computed, and only
 * then written, all outputs or none (the library's mha_outputs): a failed run leaves no output
 * behind and never changes an earlier one. Usage errors exit 1, runtime failures exit 2, each
 * with one "mha: error:" line. Under mpirun every rank computes its shard of the sequence and
 * rank 0 writes (tools/cli_mpi.h). */
#include "cli.h"
#include "cli_mpi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_help(FILE *f, int backward) {
    if (!backward)
        fputs("usage: mha forward --weights W.safetensors [--prefix P] [--heads H] --query Q.npy\n"
              "                   --out Y.npy [options]\n\n"
              "Runs torch.nn.MultiheadAttention(batch_first=True) with the parameters of W on\n"
              "the inputs, and writes its output (and, on request, its attention weights).\n",
              f);
    else
        fputs("usage: mha backward --weights W.safetensors [--prefix P] [--heads H] --query Q.npy\n"
              "                    --grad-out DY.npy --grads-out G.safetensors [options]\n\n"
              "Runs the forward of torch.nn.MultiheadAttention(batch_first=True), then its\n"
              "backward with the output gradient DY, and writes every gradient to G.\n",
              f);
    fputs("\nrequired:\n"
          "  --weights W.safetensors  the layer's or a whole model's state_dict, any float dtype;\n"
          "                           layouts: nn.MultiheadAttention (in_proj_weight or\n"
          "                           q/k/v_proj_weight, out_proj), the seed's W_q/W_k/W_v/W_o,\n"
          "                           Hugging Face q_proj/k_proj/v_proj + out_proj or o_proj,\n"
          "                           BERT (self.query/key/value, output.dense), GPT-2 (c_attn,\n"
          "                           c_proj); E, kdim, vdim and bias are read from the shapes\n"
          "  --prefix P               which layer of W: the start of its names, e.g.\n"
          "                           encoder.layers.0.self_attn. (needed when W holds several\n"
          "                           layers: the error lists them)\n"
          "  --heads H                number of heads (E divisible by H); optional when W\n"
          "                           records it (files saved by mha do), and then it must agree\n"
          "  --query Q.npy            [B, L, E] (batch first), or unbatched [L, E]; every\n"
          "                           .npy input is float32 or float16\n",
          f);
    if (!backward)
        fputs("  --out Y.npy              where to write the output, float32 [B, L, E]\n", f);
    else
        fputs("  --grad-out DY.npy        gradient of the output, [B, L, E] (as the query)\n"
              "  --grads-out G.safetensors  where to write the gradients: \"query\" (for\n"
              "                           self-attention the whole input gradient), \"key\" and\n"
              "                           \"value\" when they were given, and one per parameter\n"
              "                           under the parameter's own name (in_proj_weight, ...)\n",
              f);
    fputs("\ninputs (optional):\n"
          "  --key K.npy              [B, S, kdim] or [S, kdim]; needs --value\n"
          "  --value V.npy            [B, S, vdim] or [S, vdim]; needs --key\n"
          "                           (without both: self-attention, key = value = query)\n"
          "\nmasks (optional, all of them combine; a row with every key masked gives 0):\n"
          "  --causal                 PyTorch's causal mask, top-left: query i sees keys j <= i\n"
          "  --causal-bottom-right    FlashAttention's causal mask: keys j <= i + (S - L)\n"
          "  --key-padding-mask M.npy bool [B, S] (unbatched [S]); true = ignore that key\n"
          "  --attn-mask A.npy        bool (true = NOT allowed) or float (added to the scaled\n"
          "                           scores), [L, S] or [B*H, L, S] (unbatched [H, L, S])\n"
          "\nother options:\n"
          "  --scale X                score scale instead of 1/sqrt(E/H)\n"
          "  --dtype T                compute in f32 (default), bf16 or f16: the layer's\n"
          "                           parameters and inputs are rounded to T once, every\n"
          "                           product accumulates in float32 (as PyTorch's layer of\n"
          "                           that dtype); outputs are written as float32\n",
          f);
    if (backward)
        fputs("  --out Y.npy              also write the forward output, float32 [B, L, E]\n", f);
    fputs("  --attn-out A.npy         also write the attention weights, float32 [B, L, S]\n"
          "                           (averaged over heads)\n"
          "  --per-head               with --attn-out: one map per head, [B, H, L, S]\n"
          "  --threads N              threads to use (0 = all cores, the default)\n"
          "  --isa NAME               kernels: auto (default), generic, avx2 or avx512\n"
          "  --help                   this text\n",
          f);
    fputs("\nunder mpirun -n P (when built with MPI): every rank reads the inputs and\n"
          "computes its shard of the sequence (ring attention; with a causal mask the\n"
          "zigzag split, L a multiple of 2P, else of P); rank 0 writes the outputs, the same\n"
          "as one process's. Each rank runs --threads threads (all cores by default: P ranks\n"
          "on C cores want --threads C/P). --attn-out and --attn-mask are not available\n"
          "there. An error is one line (from rank 0, or \"mha[rank R]: error: ...\" from the\n"
          "one rank that met it) and every rank exits with its code; mpirun -q keeps\n"
          "mpirun's own notes about that quiet.\n",
          f);
    fputs("\nexit status: 0 success, 1 usage error (options, including a --prefix or --heads that\n"
          "does not fit the weights), 2 runtime failure (files, shapes, dtypes)\n"
          "\nexample:\n",
          f);
    if (!backward)
        fputs(
            "  mha forward --weights layer.safetensors --heads 8 --query x.npy --causal \\\n"
            "      --out y.npy --attn-out w.npy --per-head\n"
            "  mha forward --weights cross.safetensors --heads 4 --query q.npy --key k.npy \\\n"
            "      --value v.npy --key-padding-mask pad.npy --out y.npy\n"
            "  mha forward --weights bert.safetensors --prefix bert.encoder.layer.0.attention. \\\n"
            "      --heads 12 --query x.npy --out y.npy\n",
            f);
    else
        fputs("  mha backward --weights layer.safetensors --heads 8 --query x.npy --causal \\\n"
              "      --grad-out dy.npy --grads-out grads.safetensors\n",
              f);
}

/* What one run holds besides the layer; released by run_free whatever happened. */
typedef struct {
    cli_layer l;
    mha_array dout, out, weights, dquery, dkey, dvalue;
    mha_st *grads;
} run_state;

static void run_free(run_state *r) {
    mha_array *arrs[] = {&r->dout, &r->out, &r->weights, &r->dquery, &r->dkey, &r->dvalue};
    for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++) mha_array_free(arrs[i]);
    mha_st_free(r->grads);
    cli_layer_free(&r->l);
}

/* The forward into r->out (and r->weights when want_weights): one process, or under mpirun
 * every rank its shard, gathered on rank 0. */
static int layer_forward(run_state *r, mha_forward_opts fo, int want_weights) {
#ifdef MHA_HAVE_MPI
    if (cli_mpi_active()) return cli_mpi_layer_forward(&r->l, fo, &r->out);
#endif
    return cli_layer_forward(&r->l, fo, &r->out, want_weights ? &r->weights : NULL);
}

/* The input gradients: mha_module_backward on the whole sequence, or under mpirun every rank
 * its shard, gathered on rank 0. */
static int input_grads(run_state *r) {
    cli_layer *l = &r->l;
    mha_ctx *ctx = l->ctx;
#ifdef MHA_HAVE_MPI
    if (cli_mpi_active())
        return cli_mpi_layer_backward(l, &r->dout, &r->dquery, &r->dkey, &r->dvalue);
#endif
    if (mha_array_alloc(ctx, l->dtype, l->query.ndim, l->query.shape, &r->dquery) ||
        (l->cross && mha_array_alloc(ctx, l->dtype, l->key.ndim, l->key.shape, &r->dkey)) ||
        (l->cross && mha_array_alloc(ctx, l->dtype, l->value.ndim, l->value.shape, &r->dvalue)))
        return cli_fail_lib(ctx, NULL);
    mha_tensor tdy = cli_array_tensor(&r->dout), tdq = cli_array_tensor(&r->dquery), tdk, tdv;
    if (l->cross) {
        tdk = cli_array_tensor(&r->dkey);
        tdv = cli_array_tensor(&r->dvalue);
    }
    if (mha_module_backward(ctx, l->module, &tdy, &tdq, l->cross ? &tdk : NULL,
                            l->cross ? &tdv : NULL) != MHA_OK ||
        cli_array_to(ctx, &r->dquery, MHA_DTYPE_F32) != MHA_OK || /* written as float32 */
        (l->cross && (cli_array_to(ctx, &r->dkey, MHA_DTYPE_F32) != MHA_OK ||
                      cli_array_to(ctx, &r->dvalue, MHA_DTYPE_F32) != MHA_OK)))
        return cli_fail_lib(ctx, NULL);
    return 0;
}

/* The backward pass: input gradients, then (on rank 0, the one that writes) every gradient
 * gathered into r->grads (inputs, then parameters under their own names). */
static int run_backward(run_state *r) {
    cli_layer *l = &r->l;
    mha_ctx *ctx = l->ctx;
    mha_module_zero_grad(l->module);
    int rc = input_grads(r);
    if (rc || cli_mpi_rank() > 0) return rc;
    if (mha_st_create(ctx, &r->grads) != MHA_OK ||
        mha_st_set(ctx, r->grads, "query", &r->dquery) != MHA_OK ||
        (l->cross && (mha_st_set(ctx, r->grads, "key", &r->dkey) != MHA_OK ||
                      mha_st_set(ctx, r->grads, "value", &r->dvalue) != MHA_OK)))
        return cli_fail_lib(ctx, NULL);
    for (int i = 0; i < mha_module_param_count(l->module); i++) {
        const char *name = mha_module_param_name(l->module, i);
        mha_tensor g;
        mha_array ga;
        memset(&ga, 0, sizeof ga);
        if (mha_module_param(ctx, l->module, name, NULL, &g) != MHA_OK ||
            cli_tensor_to_array(ctx, &g, &ga) != MHA_OK ||
            mha_st_set(ctx, r->grads, name, &ga) != MHA_OK) {
            mha_array_free(&ga);
            return cli_fail_lib(ctx, NULL);
        }
        mha_array_free(&ga);
    }
    return 0;
}

/* --grad-out: float32, shaped as the layer's output. */
static int load_grad_out(run_state *r, const char *path) {
    int rc = cli_load_float(r->l.ctx, "--grad-out", path, r->l.dtype, &r->dout);
    if (rc) return rc;
    int64_t want[3];
    int wn = cli_layer_out_shape(&r->l, want);
    if (r->dout.ndim == wn && !memcmp(r->dout.shape, want, (size_t)wn * sizeof(int64_t))) return 0;
    char gs[96], ws[96];
    return cli_fail("--grad-out: shape %s, expected %s (the output's shape)",
                    cli_shape_str(gs, sizeof gs, r->dout.ndim, r->dout.shape),
                    cli_shape_str(ws, sizeof ws, wn, want));
}

static int run(int argc, char **argv, int backward) {
    const char *out = NULL, *attn_out = NULL, *grad_out = NULL, *grads_out = NULL;
    int per_head = 0;
    cli_opt opts[] = {
        {"--out", CLI_OPT_STRING, &out, 0},
        {"--attn-out", CLI_OPT_STRING, &attn_out, 0},
        {"--per-head", CLI_OPT_FLAG, &per_head, 0},
        {"--grad-out", CLI_OPT_STRING, &grad_out, 0}, /* backward only: left out below */
        {"--grads-out", CLI_OPT_STRING, &grads_out, 0},
    };
    int nopts = (int)(sizeof opts / sizeof opts[0]) - (backward ? 0 : 2);
    const char *cmd = argv[0];

    /* --- the command line: everything that can be told without reading a file (exit 1) --- */
    cli_layer_args la;
    int rc = cli_layer_parse(argc, argv, &la, opts, nopts);
    if (rc == CLI_HELP) {
        print_help(stdout, backward);
        return CLI_EXIT_OK;
    }
    if (!rc && !backward && !out) rc = cli_missing(cmd, "--out");
    if (!rc && backward && !grad_out) rc = cli_missing(cmd, "--grad-out");
    if (!rc && backward && !grads_out) rc = cli_missing(cmd, "--grads-out");
    if (!rc && per_head && !attn_out)
        rc = cli_usage_error("--per-head chooses the layout of the --attn-out file",
                             "--per-head needs --attn-out");
    if (!rc) rc = cli_mpi_layer_check(&la, attn_out != NULL);
    /* under mpirun each phase ends with every rank agreeing (cli_mpi.h): one error, one code */
    if ((rc = cli_mpi_agree(rc))) return rc;
    /* Every output declared before anything is loaded: two names for one file (through ".",
     * a link, ...) are a usage error, a directory or a device fails now, not after computing.
     * Under mpirun rank 0 alone writes. */
    cli_outputs outs;
    memset(&outs, 0, sizeof outs);
    int i_out = -1, i_attn = -1, i_grads = -1;
    if (cli_mpi_rank() == 0) {
        if (out) rc = cli_outputs_add(&outs, "--out", out, &i_out);
        if (!rc && attn_out) rc = cli_outputs_add(&outs, "--attn-out", attn_out, &i_attn);
        if (!rc && backward) rc = cli_outputs_add(&outs, "--grads-out", grads_out, &i_grads);
    }
    run_state r;
    memset(&r, 0, sizeof r);
    if ((rc = cli_mpi_agree(rc))) goto done;

    /* --- load and check every input before computing anything (exit 2 from here on) --- */
    rc = cli_layer_load(&la, &r.l);
    if (!rc && backward) rc = load_grad_out(&r, grad_out);
    if ((rc = cli_mpi_agree(rc))) goto done;
    cli_layer *l = &r.l;
    mha_ctx *ctx = l->ctx;

    /* --- compute --- */
    if (attn_out && cli_layer_weights_alloc(l, per_head, &r.weights) != MHA_OK)
        rc = cli_fail_lib(ctx, NULL);
    mha_forward_opts fo = mha_forward_opts_default();
    fo.training = 0;
    fo.average_weights = !per_head;
    fo.save_for_backward = backward;
    if (!rc) rc = layer_forward(&r, fo, attn_out != NULL);
    if (!rc && backward) rc = run_backward(&r);
    if ((rc = cli_mpi_agree(rc))) goto done;

    /* --- write: only now that everything is computed, and all or nothing --- */
    if (cli_mpi_rank() == 0) {
        if (out) rc = cli_outputs_write_npy(ctx, &outs, i_out, &r.out);
        if (!rc && attn_out) rc = cli_outputs_write_npy(ctx, &outs, i_attn, &r.weights);
        if (!rc && backward) rc = cli_outputs_write_st(ctx, &outs, i_grads, r.grads);
        if (!rc) rc = cli_outputs_commit(ctx, &outs);
    }
    rc = cli_mpi_agree(rc);
done:
    cli_outputs_free(&outs);
    run_free(&r);
    return rc;
}

/* Under mpirun (cli_mpi.h) every rank runs the command on its shard of the sequence. */
static int run_mpi(int argc, char **argv, int backward) {
    int rc = cli_mpi_begin();
    return cli_mpi_end(rc ? rc : run(argc, argv, backward));
}

int mha_cmd_forward(int argc, char **argv) { return run_mpi(argc, argv, 0); }
int mha_cmd_backward(int argc, char **argv) { return run_mpi(argc, argv, 1); }
