"""mha.nn - attention layers as torch.nn modules computed by mha.

``MultiheadAttention``  a drop-in for torch.nn.MultiheadAttention (same constructor, parameters,
                        state_dict, forward and numbers; mha's fused forward and backward).
``MultiHeadAttention``  the module of the "Attention Is All You Need" walkthrough this project
                        started from: W_q, W_k, W_v, W_o and forward(x, mask).

Both run forward and backward in the C library (one call each way, the GIL released), with
dropout drawn from mha's Philox generator seeded from torch's (torch.manual_seed makes it
reproducible). Where mha differs from PyTorch, on purpose:

- A fully masked query row gives attention weights 0 and an attention output 0 (so the layer
  returns out_proj.bias there); PyTorch gives NaN with need_weights=True.
- Gradients flow through the layer's output, not through the returned attention weights (a
  backward that needs them raises NotImplementedError) nor into a float attn_mask (one that
  requires grad raises NotImplementedError).
- Tensors must be CPU tensors of the layer's dtype (float32 by default; bfloat16 or float16 with
  ``dtype=`` or ``.to()``, computed as PyTorch's layer of that dtype): ValueError otherwise,
  where PyTorch raises RuntimeError.

Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (or float16) both follow PyTorch's
layer: inputs and parameters are converted to that dtype inside the autograd graph, the layer
computes as the layer of that dtype, the output and weights come back in it, and the gradients
of float32 parameters and inputs in float32. A float mask is added in float32 there, as in the
layer of that dtype (PyTorch's rounds it to the dtype first).
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import _torch as T
from ._lib import ArgumentError
from ._torch import shape_str as _shape

__all__ = ["MultiheadAttention", "MultiHeadAttention"]

_F32 = torch.float32
# The C module's parameter names, in its order (mha_module_param_name).
_NAMES_PACKED = (b"in_proj_weight", b"in_proj_bias", b"out_proj.weight", b"out_proj.bias")
_NAMES_PACKED_NB = (b"in_proj_weight", b"out_proj.weight")
_NAMES_SEP = (b"q_proj_weight", b"k_proj_weight", b"v_proj_weight", b"in_proj_bias",
              b"out_proj.weight", b"out_proj.bias")
_NAMES_SEP_NB = (b"q_proj_weight", b"k_proj_weight", b"v_proj_weight", b"out_proj.weight")



def _cmodule(module, own, dtype):
    """The C module of an nn module whose parameters are of dtype own, for parameters of dtype:
    its own (module._mha), or for those converted under torch.autocast one per dtype, so that
    going in and out of autocast (or from one autocast dtype to the other) neither re-creates a
    module nor leaves a saved forward with a module that does not take it back."""
    if dtype == own:
        return module._mha
    mods = module.__dict__.get("_mha_autocast")
    if mods is None:
        mods = module._mha_autocast = {}
    cm = mods.get(dtype)
    if cm is None:
        cm = mods[dtype] = T.CModule()
    return cm


class MultiheadAttention(nn.MultiheadAttention):
    """torch.nn.MultiheadAttention computed by mha: change the import, keep the code.

    Parameters, buffers, ``state_dict`` (loads strictly both ways), initialization (the same
    values under the same ``torch.manual_seed``) and attributes are torch's: this class is a
    subclass whose forward runs mha's fused kernels, forward and backward.

    Parameters
    ----------
    embed_dim, num_heads, dropout, bias, kdim, vdim, batch_first, device, dtype
        As torch.nn.MultiheadAttention. dtype: torch.float32 (None), torch.bfloat16 or
        torch.float16: the parameters', the inputs' and the outputs' dtype; the layer then
        computes as PyTorch's of that dtype (each product accumulated in float32 and rounded
        once, the attention core's softmax in float32). device: the CPU.
    add_bias_kv, add_zero_attn
        Not supported: True raises NotImplementedError.

    Forward: ``forward(query, key, value, key_padding_mask=None, need_weights=True,
    attn_mask=None, average_attn_weights=True, is_causal=False)`` with PyTorch 2.13's
    semantics, shapes ``query [L, N, E]`` (``[N, L, E]`` with batch_first, ``[L, E]``
    unbatched), ``key [S, N, kdim]``, ``value [S, N, vdim]``; masks bool (True: excluded) or
    float (added), ``key_padding_mask [N, S]``, ``attn_mask [L, S]`` or ``[N*num_heads, L,
    S]``. Returns ``(attn_output, attn_weights)``, the weights ``[N, L, S]`` averaged over
    heads or ``[N, num_heads, L, S]``, or None when ``need_weights=False``.
    Differences from PyTorch: see the module docstring (a fully masked row gives 0, no
    gradient through the returned weights or a float mask).

    Example
    -------
    >>> import torch, mha
    >>> layer = mha.MultiheadAttention(64, 4, batch_first=True)
    >>> x = torch.randn(2, 10, 64)
    >>> out, w = layer(x, x, x)
    >>> out.shape, w.shape
    (torch.Size([2, 10, 64]), torch.Size([2, 10, 10]))
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
                 add_zero_attn=False, kdim=None, vdim=None, batch_first=False, device=None,
                 dtype=None):
        fn = "mha.MultiheadAttention"
        if add_bias_kv:
            raise NotImplementedError(f"{fn}: add_bias_kv=True is not supported (the learned "
                                      "key/value bias rows; use torch.nn.MultiheadAttention)")
        if add_zero_attn:
            raise NotImplementedError(f"{fn}: add_zero_attn=True is not supported (the zero "
                                      "key/value row; use torch.nn.MultiheadAttention)")
        if dtype is not None and dtype not in T.CORE_DTYPES:
            raise ArgumentError(f"{fn}: dtype: got {dtype}, expected torch.float32 (None), "
                             "torch.bfloat16 or torch.float16")
        if device is not None and torch.device(device).type != "cpu":
            raise ArgumentError(f"{fn}: device: got {device}, expected the CPU (mha computes on "
                             "the CPU)")
        super().__init__(embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim,
                         vdim, batch_first, device, dtype)
        self._mha = T.CModule()

    @classmethod
    def from_file(cls, path, *, prefix=None, num_heads=None, batch_first=False, dropout=0.0,
                  dtype=None):
        """A layer with the weights of one attention layer of a safetensors checkpoint, in any
        layout mha reads (nn.MultiheadAttention, the W_q/W_k/W_v/W_o module, Hugging Face
        q_proj/k_proj/v_proj/o_proj, BERT, GPT-2; see mha.load_layer). ``prefix`` picks the
        layer in a whole model's file (e.g. ``"encoder.layers.0.self_attn."``);
        ``num_heads`` is needed when the file does not record it. ``dtype``: the layer's
        (float32 by default; torch.bfloat16 keeps a bf16 checkpoint's values as they are)."""
        from ._files import load_layer
        sd, heads = load_layer(path, prefix=prefix, num_heads=num_heads)
        E = sd["out_proj.weight"].shape[0]
        kdim = sd["k_proj_weight"].shape[1] if "k_proj_weight" in sd else E
        vdim = sd["v_proj_weight"].shape[1] if "v_proj_weight" in sd else E
        layer = cls(E, heads, dropout=dropout, bias="out_proj.bias" in sd, kdim=kdim, vdim=vdim,
                    batch_first=batch_first, dtype=dtype)
        layer.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
        return layer

    def _params(self, autocast=None):
        """The C module's parameter names and the tensors (contiguous, of the layer's dtype) for
        them (read straight from the parameter dicts: this runs on every call). autocast: a
        dtype to convert them to, inside the autograd graph (their gradients come back in the
        parameters' dtype), as torch.autocast converts the weights of torch's layer."""
        P, op = self._parameters, self._modules["out_proj"]._parameters
        b, ob = P["in_proj_bias"], op["bias"]
        if self._qkv_same_embed_dim:
            names = _NAMES_PACKED if b is not None else _NAMES_PACKED_NB
            ps = [P["in_proj_weight"]]
        else:
            names = _NAMES_SEP if b is not None else _NAMES_SEP_NB
            ps = [P["q_proj_weight"], P["k_proj_weight"], P["v_proj_weight"]]
        if b is not None or ob is not None:
            # The C module has both biases or neither. One alone (bias=False given an
            # out_proj.bias afterwards, as a layer with only an output bias is converted, or a
            # bias set to None) runs with zeros for the other: PyTorch's numbers, and the
            # bias that is there gets its gradient.
            wo = op["weight"]
            if b is None:
                names = _NAMES_PACKED if self._qkv_same_embed_dim else _NAMES_SEP
                b = torch.zeros(3 * self.embed_dim, dtype=wo.dtype)
            if ob is None:
                ob = torch.zeros(wo.shape[0], dtype=wo.dtype)
            ps += (b, wo, ob)
        else:
            ps.append(op["weight"])
        for p in ps:
            if p.dtype != ps[-1].dtype or not p.is_cpu or not p.is_contiguous():
                for n, p in zip(names, ps):
                    T.check_param(p, n.decode(), "mha.MultiheadAttention", ps[-1].dtype)
        if ps[-1].dtype not in T.CORE_DTYPES:
            T.check_param(ps[-1], names[-1].decode(), "mha.MultiheadAttention")
        if autocast is not None:
            ps = [T.autocast_to(p, autocast) for p in ps]
        return names, ps

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        fn = "mha.MultiheadAttention.forward"
        if getattr(self, "bias_k", None) is not None or self.add_zero_attn:
            raise NotImplementedError(f"{fn}: add_bias_kv / add_zero_attn are not supported")
        self_attn = query is key and key is value and self._qkv_same_embed_dim
        dt = self.out_proj.weight.dtype  # the layer's dtype: its inputs' too
        ac = T.autocast_dtype()
        if ac is not None:
            # Under torch.autocast("cpu", dtype=ac) torch's layer computes in ac: inputs and
            # parameters converted inside the graph (gradients in their own dtypes), results
            # in ac. Here as the layer of dtype ac would, on the converted values.
            dt = ac
            query = T.autocast_to(query, ac)
            if self_attn:
                key = value = query
            else:
                key, value = T.autocast_to(key, ac), T.autocast_to(value, ac)
        dt = None if dt == _F32 else dt
        query = T.as_input(query, "query", fn, dt)
        if not self_attn:
            key = T.as_input(key, "key", fn, dt)
            value = T.as_input(value, "value", fn, dt)
        batched = query.dim() == 3
        if query.dim() not in (2, 3):
            raise ArgumentError(f"{fn}: query: got a {query.dim()}-D tensor {_shape(query)}, expected "
                             "3-D (batched) or 2-D (unbatched)")
        if not self_attn:
            for name, t in (("key", key), ("value", value)):
                if t.dim() != query.dim():
                    raise ArgumentError(f"{fn}: {name}: got a {t.dim()}-D tensor {_shape(t)}, "
                                     f"expected {query.dim()}-D as query")
        self._check_shapes(query, key, value, self_attn, batched, fn)
        T.check_mask(key_padding_mask, "key_padding_mask", fn)
        T.check_mask(attn_mask, "attn_mask", fn)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the "
                               "Transformer module method `generate_square_subsequent_mask` to "
                               "create this mask.")
        # [N, L, E] views (no copies) of the layouts the caller uses.
        seq_first = batched and not self.batch_first
        q = query.transpose(0, 1) if seq_first else query
        k = v = None
        if not self_attn:
            k = key.transpose(0, 1) if seq_first else key
            v = value.transpose(0, 1) if seq_first else value
        N = q.shape[0] if batched else 1
        L = q.shape[-2]
        S = k.shape[-2] if k is not None else L
        H = self.num_heads
        mask = self._mask(key_padding_mask, attn_mask, is_causal and key_padding_mask is None
                          and not need_weights, batched, N, H, L, S, fn)
        names, ps = self._params(ac)
        if N == 0 or L == 0:  # nothing to attend from: an empty output, as PyTorch's
            out = self._empty_output(q, k, v)
            w = None if not need_weights else torch.zeros(
                (N, L, S) if average_attn_weights else (N, H, L, S), dtype=q.dtype)
            if not batched and w is not None:
                w = w[0]
            return (out.transpose(0, 1) if seq_first else out), w
        cmod = _cmodule(self, self.out_proj.weight.dtype, ps[0].dtype)
        call = T.LayerCall(cmod, names, ps, mask, self.training, self.dropout,
                           average_attn_weights, need_weights, H)
        cmod.get(self.embed_dim, H, self.kdim, self.vdim, b"in_proj_bias" in names,
                 float(self.dropout), ps[0].dtype)
        out, weights = T.run_layer(call, q, k, v, any(p.requires_grad for p in ps))
        if seq_first:
            out = out.transpose(0, 1)
        return out, weights

    def _empty_output(self, q, k, v):
        """PyTorch's computation on no query rows (or no batch): an empty output that is still
        a function of query, key, value and every parameter, so that each gets a zero gradient
        (not None) as in PyTorch. k, v: None for self-attention."""
        E, b = self.embed_dim, self.in_proj_bias
        if self._qkv_same_embed_dim:
            ws = self.in_proj_weight.split(E)
        else:
            ws = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        bs = b.split(E) if b is not None else (None,) * 3
        qp, kp, vp = (F.linear(x, w, bias) for x, w, bias in
                      zip((q, q if k is None else k, q if v is None else v), ws, bs))
        heads = torch.matmul(torch.matmul(qp, kp.transpose(-2, -1)), vp)  # [N, L, E]: empty
        return F.linear(heads, self.out_proj.weight, self.out_proj.bias)

    def _check_shapes(self, query, key, value, self_attn, batched, fn):
        """Sizes that must agree, named in the caller's layout (the library sees the [N, L, E]
        views and would name their dimensions)."""
        E = self.embed_dim
        if query.shape[-1] != E:
            raise ArgumentError(f"{fn}: query.shape[{query.dim() - 1}]: got {query.shape[-1]}, "
                             f"expected {E} (embed_dim)")
        if self_attn:
            return
        for name, t, want, what in (("key", key, self.kdim, "kdim"),
                                    ("value", value, self.vdim, "vdim")):
            if t.shape[-1] != want:
                raise ArgumentError(f"{fn}: {name}.shape[{t.dim() - 1}]: got {t.shape[-1]}, "
                                 f"expected {want} ({what})")
        if batched:
            bd, sd = (0, 1) if self.batch_first else (1, 0)
            for name, t in (("key", key), ("value", value)):
                if t.shape[bd] != query.shape[bd]:
                    raise ArgumentError(f"{fn}: {name}.shape[{bd}]: got {t.shape[bd]}, expected "
                                     f"{query.shape[bd]} (the batch size of query)")
        else:
            sd = 0
        if value.shape[sd] != key.shape[sd]:
            raise ArgumentError(f"{fn}: value.shape[{sd}]: got {value.shape[sd]}, expected "
                             f"{key.shape[sd]} (the sequence length of key)")

    def _mask(self, kpm, attn_mask, causal, batched, N, H, L, S, fn):
        """The layer's masks as an mha_mask, as PyTorch 2.13 reads them."""
        if causal:  # torch's is_causal hint: attn_mask is the causal mask, not read
            attn_mask = None
        if kpm is None and attn_mask is None:
            return T.MaskArg(causal=1) if causal else T.NO_MASK
        want = (N, S) if batched else (S,)
        if kpm is not None and tuple(kpm.shape) != want:
            raise ArgumentError(f"{fn}: key_padding_mask: got shape {_shape(kpm)}, expected "
                             f"[{', '.join(map(str, want))}]")
        nb = N * H if batched else H
        if attn_mask is not None:
            if attn_mask.dim() == 2 and tuple(attn_mask.shape) != (L, S):
                raise ArgumentError(f"{fn}: attn_mask: got shape {_shape(attn_mask)}, expected "
                                 f"[{L}, {S}] (2-D) or [{nb}, {L}, {S}] (3-D)")
            if attn_mask.dim() == 3 and tuple(attn_mask.shape) != (nb, L, S):
                raise ArgumentError(f"{fn}: attn_mask: got shape {_shape(attn_mask)}, expected "
                                 f"[{nb}, {L}, {S}] (3-D: batch * num_heads) or [{L}, {S}]")
            if attn_mask.dim() not in (2, 3):
                raise ArgumentError(f"{fn}: attn_mask: got a {attn_mask.dim()}-D tensor, expected "
                                 f"[{L}, {S}] or [{nb}, {L}, {S}]")
        if kpm is not None and kpm.is_floating_point():
            # A float key padding mask adds to the scores: merged into one float mask.
            base = torch.zeros((L, S), dtype=torch.float32) if attn_mask is None else (
                attn_mask.float() if attn_mask.is_floating_point() else
                torch.zeros(attn_mask.shape).masked_fill_(attn_mask, float("-inf")))
            # N, not -1: with L or S = 0 there are no elements and -1 is ambiguous
            merged = base.view(N, H, L, S) if base.dim() == 3 else base.view(1, 1, L, S)
            merged = merged + kpm.float().view(N, 1, 1, S)
            return T.MaskArg(attn_float=merged.expand(N, H, L, S).reshape(nb, L, S).contiguous(),
                             batched=True)
        kp = T.bool_bytes(kpm) if kpm is not None else None
        ab = af = None
        if attn_mask is not None and attn_mask.dim() == 2 and T.is_causal_mask(
                attn_mask, True if attn_mask.dtype == torch.bool else float("-inf")):
            return T.MaskArg(causal=1, key_padding=kp)  # the same numbers, half the work
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                ab = T.bool_bytes(attn_mask)
            else:
                af = T.float_mask(attn_mask)
        return T.MaskArg(key_padding=kp, attn_bool=ab, attn_float=af,
                         batched=attn_mask is not None and attn_mask.dim() == 3)


class MultiHeadAttention(nn.Module):
    """The multi-head attention module of the "Attention Is All You Need" walkthrough this
    project started from, computed by mha.

    Parameters ``W_q``, ``W_k``, ``W_v``, ``W_o`` (each ``nn.Linear(d_model, d_model)`` with
    bias) and a ``dropout`` submodule, so its ``state_dict`` (``W_q.weight``, ``W_q.bias``,
    ...) is that module's and its checkpoints load with ``strict=True``.

    ``forward(x, mask=None)``: ``x [batch, seq, d_model]``; ``mask`` broadcastable to
    ``[batch, num_heads, seq, seq]``, positions where ``mask == 0`` are masked (a padding mask
    ``[batch, 1, 1, seq]`` or a causal ``[seq, seq]`` one, say). Returns ``(output [batch, seq,
    d_model], attention_weights [batch, num_heads, seq, seq])``, the weights after dropout as
    that module returns them. ``.to(torch.bfloat16)`` (or float16) makes it compute in that
    dtype, as mha.MultiheadAttention(dtype=...) does; x must then be of it.

    Difference: a fully masked query row gives weights 0 and output ``W_o.bias`` (the original,
    filling scores with -1e9, gives uniform weights there).

    Example
    -------
    >>> import torch, mha
    >>> attn = mha.MultiHeadAttention(d_model=64, num_heads=4)
    >>> x = torch.randn(2, 10, 64)
    >>> causal = torch.tril(torch.ones(10, 10))
    >>> out, weights = attn(x, causal)
    >>> weights.shape
    torch.Size([2, 4, 10, 10])
    """

    def __init__(self, d_model, num_heads, dropout=0.1):
        super().__init__()
        if d_model % num_heads != 0:
            raise ArgumentError(f"mha.MultiHeadAttention: d_model: got {d_model}, expected a "
                             f"multiple of num_heads = {num_heads}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.d_k = d_model // num_heads
        self.W_q = nn.Linear(d_model, d_model)
        self.W_k = nn.Linear(d_model, d_model)
        self.W_v = nn.Linear(d_model, d_model)
        self.W_o = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        # W_q, W_k, W_v re-homed into one [3E, E] weight and one [3E] bias storage (same
        # values), so that the C layer reads them as its in_proj_weight without a copy.
        E = d_model
        w = torch.cat([self.W_q.weight, self.W_k.weight, self.W_v.weight]).detach()
        b = torch.cat([self.W_q.bias, self.W_k.bias, self.W_v.bias]).detach()
        for i, lin in enumerate((self.W_q, self.W_k, self.W_v)):
            lin.weight = nn.Parameter(w[i * E:(i + 1) * E])
            lin.bias = nn.Parameter(b[i * E:(i + 1) * E])
        self._mha = T.CModule()

    @classmethod
    def from_file(cls, path, *, prefix=None, num_heads=None, dropout=0.1):
        """The module with the weights of one attention layer of a safetensors checkpoint in
        any layout mha reads (see MultiheadAttention.from_file); key and value sizes must equal
        d_model."""
        from ._files import load_layer
        sd, heads = load_layer(path, prefix=prefix, num_heads=num_heads)
        if "in_proj_weight" not in sd:
            raise ArgumentError(f"mha.MultiHeadAttention.from_file: {path}: the layer has kdim/vdim "
                             "different from d_model; use mha.MultiheadAttention.from_file")
        E = sd["out_proj.weight"].shape[0]
        m = cls(E, heads, dropout=dropout)
        w = torch.from_numpy(sd["in_proj_weight"])
        b = torch.from_numpy(sd["in_proj_bias"]) if "in_proj_bias" in sd else torch.zeros(3 * E)
        ob = torch.from_numpy(sd["out_proj.bias"]) if "out_proj.bias" in sd else torch.zeros(E)
        with torch.no_grad():
            for i, lin in enumerate((m.W_q, m.W_k, m.W_v)):
                lin.weight.copy_(w[i * E:(i + 1) * E])
                lin.bias.copy_(b[i * E:(i + 1) * E])
            m.W_o.weight.copy_(torch.from_numpy(sd["out_proj.weight"]))
            m.W_o.bias.copy_(ob)
        return m

    def _packed(self, ts, fn):
        """The [3E, ...] tensor whose row blocks are ts (W_q, W_k, W_v's weights or biases):
        their own storage when adjacent (as __init__ lays them out), else a packed copy."""
        for i, t in enumerate(ts):
            T.check_param(t, ("W_q", "W_k", "W_v")[i], fn, self.W_o.weight.dtype)
        a, b, c = ts
        n = a.numel() * a.element_size()
        if (a.is_contiguous() and b.is_contiguous() and c.is_contiguous() and
                b.data_ptr() == a.data_ptr() + n and c.data_ptr() == a.data_ptr() + 2 * n and
                a.untyped_storage().data_ptr() == c.untyped_storage().data_ptr()):
            return a.detach().as_strided((3 * a.shape[0],) + tuple(a.shape[1:]),
                                         (a.stride(0),) + tuple(a.stride()[1:]))
        return torch.cat([a.detach(), b.detach(), c.detach()])

    def forward(self, x, mask=None):
        fn = "mha.MultiHeadAttention.forward"
        dt = self.W_o.weight.dtype  # the module's dtype (after .to(torch.bfloat16), say)
        if dt not in T.CORE_DTYPES:
            T.check_param(self.W_o.weight, "W_o.weight", fn)
        ac = T.autocast_dtype()  # torch.autocast: computes in ac, as MultiheadAttention does
        xdt = dt if ac is None else ac
        if ac is not None:
            x = T.autocast_to(x, ac)
        x = T.as_input(x, "x", fn, None if xdt == _F32 else xdt)
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ArgumentError(f"{fn}: x: got shape {_shape(x)}, expected [batch, seq, "
                             f"{self.d_model}]")
        B, L, E, H = x.shape[0], x.shape[1], self.d_model, self.num_heads
        T.check_param(self.W_o.weight, "W_o.weight", fn, dt)
        T.check_param(self.W_o.bias, "W_o.bias", fn, dt)
        w = self._packed((self.W_q.weight, self.W_k.weight, self.W_v.weight), fn)
        b = self._packed((self.W_q.bias, self.W_k.bias, self.W_v.bias), fn)
        # W_q.weight, W_q.bias, W_k.weight, ..., W_o.bias: what _SeedFunction differentiates
        seeds = [p for lin in (self.W_q, self.W_k, self.W_v, self.W_o)
                 for p in (lin.weight, lin.bias)]
        if xdt != dt:  # under autocast: converted inside the graph, the C layer reads those
            seeds = [T.autocast_to(p, xdt) for p in seeds]
            w, b = torch.cat(seeds[0:6:2]).detach(), torch.cat(seeds[1:6:2]).detach()
        names = [b"in_proj_weight", b"in_proj_bias", b"out_proj.weight", b"out_proj.bias"]
        ps = [w, b, seeds[6], seeds[7]]
        cmod = _cmodule(self, dt, xdt)
        call = T.LayerCall(cmod, names, ps, self._mask(mask, B, H, L, fn), self.training,
                           self.dropout.p, False, True, H)
        cmod.get(E, H, E, E, True, float(self.dropout.p), xdt)
        if torch.is_grad_enabled() and (any(p.requires_grad for p in seeds) or
                                        x.requires_grad):
            return _SeedFunction.apply(call, x, *seeds)
        out, weights, _ = call.run_forward(x, None, None, save=False)
        return out, weights

    @staticmethod
    def _mask(mask, B, H, L, fn):
        """mask == 0 marks excluded positions; broadcast to [B, H, L, L] as little as needed:
        [L, L] shared, [B, 1, 1, L] as key padding, else [B*H, L, L]."""
        if mask is None:
            return T.NO_MASK
        if not isinstance(mask, torch.Tensor):
            raise ArgumentError(f"{fn}: mask: got {type(mask).__name__}, expected a torch.Tensor")
        if mask.device.type != "cpu":
            raise ArgumentError(f"{fn}: mask: got a tensor on {mask.device}, expected a CPU tensor")
        if mask.dim() > 4:
            raise ArgumentError(f"{fn}: mask: got a {mask.dim()}-D tensor, expected at most 4-D "
                             f"(broadcastable to [{B}, {H}, {L}, {L}])")
        m = (mask == 0)
        m4 = m.reshape((1,) * (4 - m.dim()) + tuple(m.shape))
        try:
            torch.broadcast_shapes(m4.shape, (B, H, L, L))
        except RuntimeError:
            raise ArgumentError(f"{fn}: mask: got shape {_shape(mask)}, expected a shape "
                             f"broadcastable to [{B}, {H}, {L}, {L}]") from None
        if m4.shape[0] == 1 and m4.shape[1] == 1:
            shared = m4[0, 0].expand(L, L)
            if T.is_causal_mask(shared, True):  # torch.tril(ones): the causal flag
                return T.MaskArg(causal=1)
            return T.MaskArg(attn_bool=T.bool_bytes(shared))
        if m4.shape[1] == 1 and m4.shape[2] == 1:
            return T.MaskArg(key_padding=T.bool_bytes(m4[:, 0, 0].expand(B, L)))
        full = m4.expand(B, H, L, L).reshape(B * H, L, L)
        return T.MaskArg(attn_bool=T.bool_bytes(full), batched=True)


class _SeedFunction(torch.autograd.Function):
    """The seed module through LayerFunction's machinery, with its parameters as W_q, W_k,
    W_v separately (their gradients are the row blocks of in_proj_weight's)."""

    @staticmethod
    def forward(ctx, call, x, wq, bq, wk, bk, wv, bv, wo, bo):
        # call.values (the packed views the C layer reads) first: the backward's values
        return T.layer_forward(ctx, call, x, None, None,
                               (*call.values, wq, wk, wv, bq, bk, bv, wo, bo))

    @staticmethod
    @T.first_order_only
    def backward(ctx, dout, dweights):
        r = T.layer_backward(ctx, dout, dweights, ctx.saved_tensors[:4])
        if r is None:
            return (None,) * 10
        dx, _, _, g = r
        gw, gb, gwo, gbo = g
        E = gwo.shape[0]
        return (None, dx, gw[:E], gb[:E], gw[E:2 * E], gb[E:2 * E], gw[2 * E:], gb[2 * E:],
                gwo, gbo)
