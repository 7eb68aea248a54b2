"""py_util - what the PyTorch-side tests share (test_py_torch_mha, test_py_seed, test_py_sdpa,
test_py_torch_errors): comparisons that say what differs and where, the float64 oracle's
conversions, masks that never mask a whole row, and gradients as a name -> tensor dict.

The oracle is PyTorch 2.13 itself, run in float64 on the same parameters: mha computes in
float32, so what a comparison measures is mha's float32 error alone, not PyTorch's float32 error
on top of it. Tolerances (why these numbers): the inputs and parameters are O(1) (randn inputs,
PyTorch's own initializations), every reduction is at most ~100 terms long, and float32 has a
unit roundoff of 6e-8: a careful float32 computation is then within ~1e-6 of the exact value;
OUT_TOL leaves 10x room for the different summation orders of fused kernels. Gradients sum over
batch * length more terms of larger size (the parameter gradients), so GRAD_TOL is 10x looser.
"""
import math

import torch

OUT_TOL = dict(atol=1e-5, rtol=1e-5)
# significand bits of the 2-byte dtypes: half an ulp is 2^-MANT
MANT = {torch.bfloat16: 8, torch.float16: 11}
GRAD_TOL = dict(atol=1e-4, rtol=1e-4)


def assert_close(actual, expected, what, tol=OUT_TOL):
    """actual (mha, float32) against expected (the float64 oracle), with `what` in the message
    (torch.testing's message already gives the worst index and both values there)."""
    assert actual is not None, f"{what}: got None, expected a tensor of shape {expected.shape}"
    assert actual.shape == expected.shape, (
        f"{what}: shape: got {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    torch.testing.assert_close(actual.detach().double(), expected.detach().double(),
                               check_dtype=False, msg=lambda m: f"{what}: {m}", **tol)


def to_ref(t):
    """A float tensor as a float64 leaf (bool masks unchanged, None stays None)."""
    if t is None or not t.is_floating_point():
        return t
    return t.detach().double()


def leaf(t, requires_grad=True):
    """A fresh leaf copy of t (so two runs never share a .grad)."""
    return t.detach().clone().requires_grad_(requires_grad)


def float64_copy(module_class, layer, *args, **kwargs):
    """module_class(*args, **kwargs) in float64 with layer's parameters (strict load)."""
    ref = module_class(*args, **kwargs).double()
    ref.load_state_dict(layer.state_dict(), strict=True)
    ref.train(layer.training)
    return ref


def grads(loss, inputs, module):
    """d loss / d (each input and each parameter): {'query': ..., 'in_proj_weight': ...}.
    inputs: a dict name -> leaf tensor (the same tensor may appear under several names)."""
    names = list(inputs) + [n for n, _ in module.named_parameters()]
    tensors = list(inputs.values()) + [p for _, p in module.named_parameters()]
    unique = list({id(t): t for t in tensors}.values())
    got = torch.autograd.grad(loss, unique, allow_unused=True)
    by_id = {id(t): g for t, g in zip(unique, got)}
    return {n: by_id[id(t)] for n, t in zip(names, tensors)}


def assert_grads_close(actual, expected, what):
    assert sorted(actual) == sorted(expected), f"{what}: gradient names differ"
    for name in expected:
        assert expected[name] is not None, f"{what}: oracle has no gradient for {name}"
        assert_close(actual[name], expected[name], f"{what}: grad {name}", GRAD_TOL)


def keep_one(masked, dim=-1, generator=None):
    """masked: bool, True = left out. Frees one random position along `dim` in every row, so no
    row is fully masked (the case where mha and PyTorch differ on purpose, tested apart)."""
    masked = masked.clone().movedim(dim, -1)
    n = masked.shape[-1]
    idx = torch.randint(0, n, masked.shape[:-1] + (1,), generator=generator)
    masked.scatter_(-1, idx, False)
    return masked.movedim(-1, dim)


def random_mask(shape, kind, gen, p=0.3):
    """A mask in nn.MultiheadAttention's convention (bool: True = masked; float: added to the
    scores), with every row along the last dimension keeping at least one key.
    kind: 'bool' or 'float' (finite noise, -inf where masked)."""
    masked = keep_one(torch.rand(shape, generator=gen) < p, generator=gen)
    if kind == "bool":
        return masked
    noise = torch.randn(shape, generator=gen)
    return noise.masked_fill(masked, float("-inf"))


def causal_mask(L, S, kind):
    """The top-left causal mask in nn.MultiheadAttention's convention (True / -inf above the
    diagonal), as nn.Transformer.generate_square_subsequent_mask makes it for L == S."""
    above = torch.ones(L, S, dtype=torch.bool).triu(1)
    if kind == "bool":
        return above
    return torch.zeros(L, S).masked_fill(above, float("-inf"))


def softmax_dropout_reference(scores, keep, p):
    """softmax along the last dimension, then survivors scaled by 1 / (1 - p)."""
    return torch.softmax(scores, dim=-1) * keep / (1.0 - p)


def zero_fraction_bounds(n, p, sigmas=5.0):
    """The interval in which the fraction of dropped weights of n independent draws falls
    except with probability ~1e-6 (normal approximation of the binomial)."""
    sd = math.sqrt(p * (1.0 - p) / n)
    return p - sigmas * sd, p + sigmas * sd


# Autograd nodes of PyTorch's own attention math: none may appear in the graph of an mha
# result, whose gradient must come from mha's fused backward.
TORCH_ATTENTION_NODES = ("Softmax", "ScaledDotProduct", "Bmm", "Baddbmm", "Addmm", "MmBackward",
                         "Matmul", "Linear", "Einsum")


def assert_mha_backward(t, what):
    """Walks t's autograd graph: a custom autograd.Function's node (mha's) is there, and none
    of PyTorch's attention math."""
    seen, stack, names, custom = set(), [t.grad_fn], [], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        custom += isinstance(node, torch.autograd.function.BackwardCFunction)
        stack.extend(f for f, _ in node.next_functions)
    torch_math = [n for n in names if any(k in n for k in TORCH_ATTENTION_NODES)]
    assert not torch_math, f"{what}: PyTorch computes the gradient: {torch_math} in {names}"
    assert custom, f"{what}: no autograd.Function of mha's in the graph: {names}"


def assert_error_within(what, ours, theirs, ref64, limit, dtype):
    """mha's max-abs error against the float64 reference at most limit x PyTorch's in the same
    dtype, PyTorch's floored at half an ulp of the reference's scale (so that the bound stays
    meaningful when PyTorch happens to be exact)."""
    ea = (ours.double() - ref64).abs().max().item()
    eb = (theirs.double() - ref64).abs().max().item()
    floor = ref64.abs().max().item() * 2.0 ** -MANT[dtype]
    assert ea <= limit * max(eb, floor), (
        f"{what}: mha's error {ea:.3g} > {limit} x torch's {eb:.3g} (floor {floor:.3g})")


def assert_layer_errors_within(got, tor, want, module, cross, dtype):
    """A layer's forward + backward in a low dtype against PyTorch's and a float64 reference,
    each a tuple (out, weights, [input gradients, then the parameters' in name order]): out and
    the weights within 2x PyTorch's error (assert_error_within), every gradient within 3x."""
    pairs = [("out", got[0], tor[0], want[0], 2), ("weights", got[1], tor[1], want[1], 2)]
    names = ["dquery"] + (["dkey", "dvalue"] if cross else [])
    names += [n for n, _ in sorted(module.named_parameters())]
    pairs += [(n, a, b, c, 3) for n, a, b, c in zip(names, got[2], tor[2], want[2])]
    for what, a, b, ref64, limit in pairs:
        assert_error_within(what, a, b, ref64, limit, dtype)
