"""test_py_module_dtype - mha.MultiheadAttention(..., dtype=torch.bfloat16 / torch.float16).

Accuracy: torch.nn.MultiheadAttention of the same dtype holds the same parameters; a float64
torch layer holds them converted exactly, and runs on the same (rounded) inputs with the same
output gradient: the reference. mha's error (max-abs against it) must be at most 2x torch's
for the output and the weights, 3x for every gradient (inputs and parameters), with torch's
floored at half an ulp of the dtype at the reference's scale (as test_py_dtype does for the
core). Cases: self-attention, cross-attention with kdim / vdim, key padding with a causal
mask, need_weights per head. Wiring: dtypes of every result, state_dict both ways, errors.
"""
import pytest
import torch

import mha
from py_util import MANT, assert_layer_errors_within

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16}

# name, E, H, kdim, vdim, N, L, S, cross, mask
CASES = [
    ("self", 64, 4, None, None, 2, 33, 33, False, None),
    ("cross_kv_dims", 48, 3, 40, 24, 2, 17, 29, True, None),
    ("padding_causal", 64, 2, None, None, 3, 40, 40, False, "padding_causal"),
    ("head128", 256, 2, None, None, 1, 64, 64, False, None),
]


def _layers(dt, E, H, kdim, vdim, seed):
    torch.manual_seed(seed)
    ref = torch.nn.MultiheadAttention(E, H, kdim=kdim, vdim=vdim, batch_first=True, dtype=dt)
    with torch.no_grad():  # biases nonzero, so that they are checked
        for n, p in ref.named_parameters():
            if "bias" in n:
                p.copy_(torch.randn_like(p.float()).to(dt) * 0.1)
    ours = mha.MultiheadAttention(E, H, kdim=kdim, vdim=vdim, batch_first=True, dtype=dt)
    ours.load_state_dict(ref.state_dict(), strict=True)
    r64 = torch.nn.MultiheadAttention(E, H, kdim=kdim, vdim=vdim, batch_first=True,
                                      dtype=torch.float64)
    r64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()}, strict=True)
    return ours, ref, r64


def _run(layer, q, k, v, dout, kw, cross):
    q = q.clone().requires_grad_()
    k = k.clone().requires_grad_() if cross else q
    v = v.clone().requires_grad_() if cross else q
    out, w = layer(q, k, v, **kw)
    out.backward(dout)
    grads = [q.grad] + ([k.grad, v.grad] if cross else [])
    grads += [p.grad for _, p in sorted(layer.named_parameters())]
    return out, w, grads


def _masks(mask, N, L, S, dt):
    if mask != "padding_causal":
        return {}
    kpm = torch.zeros(N, S, dtype=torch.bool)
    kpm[0, -5:] = True
    kpm[1, -1:] = True
    return {"key_padding_mask": kpm,
            "attn_mask": torch.triu(torch.ones(L, S, dtype=torch.bool), 1)}


@pytest.mark.parametrize("dname", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_accuracy_against_torch(dname, case):
    dt = DTYPES[dname]
    name, E, H, kdim, vdim, N, L, S, cross, mask = case
    ours, ref, r64 = _layers(dt, E, H, kdim, vdim, 11)
    g = torch.Generator().manual_seed(5)
    q = torch.randn(N, L, E, generator=g).to(dt)
    k = torch.randn(N, S, kdim or E, generator=g).to(dt)
    v = torch.randn(N, S, vdim or E, generator=g).to(dt)
    dout = torch.randn(N, L, E, generator=g).to(dt)
    kw = dict(_masks(mask, N, L, S, dt), need_weights=True,
              average_attn_weights=name != "padding_causal")
    got = _run(ours, q, k, v, dout, kw, cross)
    tor = _run(ref, q, k, v, dout, kw, cross)
    kw64 = dict(kw)
    want = _run(r64, q.double(), k.double(), v.double(), dout.double(), kw64, cross)
    assert got[0].dtype == dt and got[1].dtype == dt
    assert all(x.dtype == dt for x in got[2])
    assert_layer_errors_within(got, tor, want, ours, cross, dt)


def test_structure_follows_torch():
    """Parameters, state_dict (strict both ways) and attributes in the dtype, as torch's."""
    ours = mha.MultiheadAttention(32, 4, dtype=torch.bfloat16)
    ref = torch.nn.MultiheadAttention(32, 4, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters())
    ref.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(5, 2, 32).bfloat16()  # sequence first
    o1, w1 = ours(x, x, x)
    o2, w2 = ref(x, x, x)
    assert o1.dtype == torch.bfloat16 and o1.shape == o2.shape and w1.shape == w2.shape
    assert (o1.float() - o2.float()).abs().max() < 0.05


def test_training_step_changes_weights_in_dtype():
    torch.manual_seed(3)
    layer = mha.MultiheadAttention(32, 2, dropout=0.1, batch_first=True, dtype=torch.bfloat16)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(2, 8, 32).bfloat16()
    before = layer.in_proj_weight.detach().clone()
    out, _ = layer(x, x, x, need_weights=False)
    out.float().square().mean().backward()
    assert layer.in_proj_weight.grad.dtype == torch.bfloat16
    assert layer.in_proj_weight.grad.abs().sum() > 0
    opt.step()
    assert layer.in_proj_weight.dtype == torch.bfloat16
    assert not torch.equal(before, layer.in_proj_weight.detach())


def test_eval_is_deterministic_and_thread_independent():
    layer = mha.MultiheadAttention(64, 4, batch_first=True, dtype=torch.bfloat16).eval()
    x = torch.randn(2, 50, 64).bfloat16()
    mha.set_num_threads(2)
    a, _ = layer(x, x, x)
    mha.set_num_threads(1)
    try:
        b, _ = layer(x, x, x)
    finally:
        mha.set_num_threads(0)
    assert torch.equal(a, b)


def test_errors_name_the_argument():
    layer = mha.MultiheadAttention(16, 2, dtype=torch.bfloat16)
    x = torch.randn(3, 1, 16)  # float32 into a bf16 layer
    with pytest.raises(ValueError, match=r"query\.dtype: got torch\.float32, expected "
                                         r"torch\.bfloat16"):
        layer(x, x, x)
    with pytest.raises(ValueError, match="dtype: got torch.float64"):
        mha.MultiheadAttention(16, 2, dtype=torch.float64)
    with torch.no_grad():  # one parameter converted behind the layer's back
        layer.out_proj.weight.data = layer.out_proj.weight.data.half()
    xb = x.bfloat16()
    with pytest.raises(ValueError, match="dtype"):
        layer(xb, xb, xb)


def test_from_file_keeps_bf16_values(tmp_path):
    from safetensors.torch import save_file
    ref = torch.nn.MultiheadAttention(32, 4, dtype=torch.bfloat16)
    save_file(ref.state_dict(), str(tmp_path / "w.safetensors"))
    layer = mha.MultiheadAttention.from_file(tmp_path / "w.safetensors", num_heads=4,
                                             dtype=torch.bfloat16)
    for k, v in ref.state_dict().items():
        got = layer.state_dict()[k]
        assert got.dtype == torch.bfloat16 and torch.equal(got, v), k


@pytest.mark.parametrize("dname", DTYPES)
def test_seed_module_in_dtype(dname):
    """The seed module after .to(dtype): the dtype in and out, close to its float32 twin on the
    same values, gradients of every Linear in the dtype."""
    dt = DTYPES[dname]
    torch.manual_seed(2)
    m = mha.MultiHeadAttention(32, 4, dropout=0.0).to(dt)
    twin = mha.MultiHeadAttention(32, 4, dropout=0.0)
    twin.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    x = torch.randn(2, 9, 32).to(dt).requires_grad_()
    x32 = x.detach().float().requires_grad_()
    causal = torch.tril(torch.ones(9, 9))
    out, w = m(x, causal)
    ref, wref = twin(x32, causal)
    assert out.dtype == dt and w.dtype == dt
    tol = 2.0 ** -(MANT[dt] - 3) * ref.abs().max().item()
    assert (out.float() - ref).abs().max().item() <= tol
    out.float().sum().backward()
    ref.sum().backward()
    assert x.grad.dtype == dt and m.W_q.weight.grad.dtype == dt
    for a, b in ((x.grad, x32.grad), (m.W_k.weight.grad, twin.W_k.weight.grad),
                 (m.W_o.bias.grad, twin.W_o.bias.grad)):
        assert (a.float() - b).abs().max().item() <= 2.0 ** -(MANT[dt] - 4) * b.abs().max()
