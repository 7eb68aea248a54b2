"""test_py_torch_errors - bad input to the PyTorch front end (mha.MultiheadAttention,
mha.MultiHeadAttention, mha.functional.scaled_dot_product_attention): every case raises, in the
process, the exception issue 9 names (ValueError for shapes, dtypes, devices and arguments;
NotImplementedError for what mha documents it does not do; RuntimeError where PyTorch raises
one), with a message that says what was wrong. Never a crash, never a silently wrong result.
"""
import pytest
import torch

import mha
from mha.functional import scaled_dot_product_attention as sdpa

# "what: got X, expected Y" somewhere in the message (the house form of every message)
GOT_EXPECTED = r"got .+, expected "


def layer(**kw):
    torch.manual_seed(0)
    return mha.MultiheadAttention(8, 2, **kw)


X = torch.randn(4, 2, 8)  # [L, N, E]


# -- documented as not implemented --------------------------------------------------------------

@pytest.mark.parametrize("option", ["add_bias_kv", "add_zero_attn"])
def test_unsupported_options_name_themselves(option):
    with pytest.raises(NotImplementedError, match=option):
        m = mha.MultiheadAttention(8, 2, **{option: True})
        m(X, X, X)  # at construction or at the first call, but never a result


def test_backward_through_the_weights_is_not_implemented():
    m = layer()
    x = X.clone().requires_grad_()
    out, w = m(x, x, x)
    with pytest.raises(NotImplementedError, match="weights"):
        (out.sum() + (w * torch.randn(w.shape)).sum()).backward()
    out, w = m(x, x, x, average_attn_weights=False)
    with pytest.raises(NotImplementedError, match="weights"):
        (w * torch.randn(w.shape)).sum().backward()
    # the weights merely returned, the output differentiated: fine
    out, w = m(x, x, x)
    out.sum().backward()
    assert x.grad is not None


def _double_backward(out, x):
    g, = torch.autograd.grad(out.sum(), x, create_graph=True)
    (g * g).sum().backward()


@pytest.mark.parametrize("which", ["sdpa", "flash", "varlen", "module", "seed"])
def test_second_derivatives_raise_instead_of_dropping_terms(which):
    # the fused backwards are not differentiable themselves: a gradient penalty through them
    # must fail loudly (torch's own CPU flash kernel raises too), never give the first-order
    # gradient alone (create_graph=True raises at once)
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, requires_grad=True)
    if which == "sdpa":
        out = sdpa(x.view(2, 1, 5, 8), x.view(2, 1, 5, 8), x.view(2, 1, 5, 8))
    elif which == "flash":
        out = mha.flash_attn_func(x.view(2, 5, 1, 8), x.view(2, 5, 1, 8), x.view(2, 5, 1, 8))
    elif which == "varlen":
        cu = torch.tensor([0, 4, 10], dtype=torch.int32)
        y = x.view(10, 1, 8)
        out = mha.flash_attn_varlen_func(y, y, y, cu, cu, 6, 6)
    elif which == "module":
        out, _ = layer()(x, x, x)
    else:
        out, _ = mha.MultiHeadAttention(8, 2)(x)
    with pytest.raises(NotImplementedError, match="create_graph=True: second derivatives"):
        _double_backward(out, x)
    # and a first-order backward still works
    x.grad = None
    torch.autograd.grad(out.sum(), x)


def test_seed_module_backward_through_the_weights_is_not_implemented():
    m = mha.MultiHeadAttention(8, 2).eval()
    x = torch.randn(2, 5, 8, requires_grad=True)
    out, w = m(x)
    with pytest.raises(NotImplementedError, match="weights"):
        (w * torch.randn(w.shape)).sum().backward()


@pytest.mark.parametrize("which", ["attn_mask", "key_padding_mask"])
def test_float_mask_requiring_grad_is_not_implemented(which):
    shape = (4, 4) if which == "attn_mask" else (2, 4)
    mask = torch.zeros(shape, requires_grad=True)
    with pytest.raises(NotImplementedError, match=which):
        out, _ = layer()(X, X, X, **{which: mask})
        out.sum().backward()  # at the call or at the backward: never a silent None grad


def test_sdpa_float_mask_requiring_grad_is_not_implemented():
    q = torch.randn(1, 2, 4, 8, requires_grad=True)
    mask = torch.zeros(4, 4, requires_grad=True)
    with pytest.raises(NotImplementedError, match="attn_mask"):
        sdpa(q, q, q, attn_mask=mask).sum().backward()


def test_sdpa_key_heads_must_divide_or_match():
    # fewer key/value heads: only with enable_gqa=True, and a divisor of the query's
    q = torch.randn(1, 4, 3, 8)
    with pytest.raises(ValueError, match=GOT_EXPECTED):
        sdpa(q, torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8))
    with pytest.raises(ValueError, match="enable_gqa"):
        sdpa(q, torch.randn(1, 3, 3, 8), torch.randn(1, 3, 3, 8), enable_gqa=True)


# -- as PyTorch raises -----------------------------------------------------------------------

@pytest.mark.parametrize("need_weights", [True, False])
def test_is_causal_without_attn_mask_raises_as_torch(need_weights):
    with pytest.raises(RuntimeError, match="attn_mask"):
        torch.nn.MultiheadAttention(8, 2)(X, X, X, is_causal=True, need_weights=need_weights)
    with pytest.raises(RuntimeError, match="attn_mask"):
        layer()(X, X, X, is_causal=True, need_weights=need_weights)


# -- dtypes ----------------------------------------------------------------------------------

BAD_DTYPES = [torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=str)
@pytest.mark.parametrize("arg", ["query", "key", "value"])
def test_input_dtype(dtype, arg):
    args = {"query": X, "key": X.clone(), "value": X.clone()}
    args[arg] = args[arg].to(dtype)
    with pytest.raises(ValueError, match=GOT_EXPECTED) as e:
        layer()(**args)
    assert str(dtype).split(".")[-1] in str(e.value) and arg in str(e.value)


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=str)
def test_module_dtype(dtype):
    if dtype == torch.float64:  # bfloat16 and float16 layers exist: test_py_module_dtype
        with pytest.raises(ValueError, match=str(dtype).split(".")[-1]):
            m = mha.MultiheadAttention(8, 2, dtype=dtype)
            m(X.to(dtype), X.to(dtype), X.to(dtype))
    m = layer().to(dtype)  # converted after construction: its inputs must follow
    with pytest.raises(ValueError, match=str(dtype).split(".")[-1]):
        m(X, X, X)
    s = mha.MultiHeadAttention(8, 2).to(dtype)
    with pytest.raises(ValueError, match=str(dtype).split(".")[-1]):
        s(torch.randn(1, 3, 8))


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=str)
def test_seed_and_sdpa_input_dtype(dtype):
    with pytest.raises(ValueError, match=GOT_EXPECTED):
        mha.MultiHeadAttention(8, 2)(torch.randn(1, 3, 8, dtype=dtype))
    q = torch.randn(1, 2, 3, 4)
    # float64: a dtype mha's attention does not take (ValueError); bfloat16 / float16 it takes,
    # but key's differs from query's: RuntimeError, as PyTorch's (tests/test_py_dtype.py)
    with pytest.raises(ValueError if dtype == torch.float64 else RuntimeError,
                       match="key.dtype: " + GOT_EXPECTED):
        sdpa(q, q.to(dtype), q)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_mask_dtype(dtype):
    with pytest.raises(ValueError, match="key_padding_mask"):
        layer()(X, X, X, key_padding_mask=torch.zeros(2, 4, dtype=dtype))
    with pytest.raises(ValueError, match="attn_mask"):
        layer()(X, X, X, attn_mask=torch.zeros(4, 4, dtype=dtype))
    q = torch.randn(1, 2, 4, 8)
    for f in (torch.nn.functional.scaled_dot_product_attention, sdpa):  # RuntimeError, as torch
        with pytest.raises(RuntimeError, match="attn_mask"):
            f(q, q, q, attn_mask=torch.ones(4, 4, dtype=dtype))


# -- devices (meta tensors stand for any non-CPU device) --------------------------------------

def test_inputs_on_another_device():
    meta = X.to("meta")
    for args in ((meta, X, X), (X, meta, X), (X, X, meta)):
        with pytest.raises(ValueError, match="meta"):
            layer()(*args)
    with pytest.raises(ValueError, match="meta"):
        layer()(X, X, X, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool, device="meta"))
    with pytest.raises(ValueError, match="meta"):
        layer()(X, X, X, attn_mask=torch.zeros(4, 4, device="meta"))
    with pytest.raises(ValueError, match="meta"):
        mha.MultiHeadAttention(8, 2)(torch.randn(1, 3, 8, device="meta"))
    with pytest.raises(ValueError, match="meta"):
        mha.MultiHeadAttention(8, 2)(torch.randn(1, 3, 8), torch.ones(3, 3, device="meta"))
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="meta"):
        sdpa(q, q.to("meta"), q)
    with pytest.raises(ValueError, match="meta"):
        sdpa(q, q, q, attn_mask=torch.ones(4, 4, dtype=torch.bool, device="meta"))


def test_module_on_another_device():
    with pytest.raises(ValueError, match="meta"):
        m = mha.MultiheadAttention(8, 2, device="meta")
        m(X, X, X)
    with pytest.raises(ValueError, match="meta"):
        layer().to("meta")(X, X, X)
    with pytest.raises(ValueError, match="meta"):
        mha.MultiHeadAttention(8, 2).to("meta")(torch.randn(1, 3, 8))


# -- shapes and arguments --------------------------------------------------------------------

def test_embed_dim_not_divisible_by_num_heads():
    # torch.nn.MultiheadAttention's own check raises AssertionError; either is a clear refusal
    with pytest.raises((ValueError, AssertionError), match="divisible|multiple"):
        mha.MultiheadAttention(10, 3)
    with pytest.raises(ValueError, match=GOT_EXPECTED):
        mha.MultiHeadAttention(10, 3)


BAD_SHAPES = {
    "query E": lambda m: m(torch.randn(4, 2, 6), X, X),
    "key kdim": lambda m: m(X, torch.randn(5, 2, 7), torch.randn(5, 2, 8)),
    "value vdim": lambda m: m(X, torch.randn(5, 2, 8), torch.randn(5, 2, 3)),
    "key/value lengths": lambda m: m(X, torch.randn(5, 2, 8), torch.randn(6, 2, 8)),
    "batch": lambda m: m(X, torch.randn(5, 3, 8), torch.randn(5, 3, 8)),
    "4-D query": lambda m: m(X[None], X[None], X[None]),
    "1-D query": lambda m: m(X[0, 0], X[0, 0], X[0, 0]),
    "unbatched query, batched key": lambda m: m(X[:, 0], X, X),
    "key_padding_mask": lambda m: m(X, X, X, key_padding_mask=torch.zeros(2, 5, dtype=bool)),
    "key_padding_mask transposed": lambda m: m(X, X, X,
                                               key_padding_mask=torch.zeros(4, 2, dtype=bool)),
    "attn_mask 2-D": lambda m: m(X, X, X, attn_mask=torch.zeros(4, 5, dtype=bool)),
    "attn_mask 3-D": lambda m: m(X, X, X, attn_mask=torch.zeros(2, 4, 4, dtype=bool)),
    "attn_mask 4-D": lambda m: m(X, X, X, attn_mask=torch.zeros(2, 2, 4, 4, dtype=bool)),
}


@pytest.mark.parametrize("case", list(BAD_SHAPES))
def test_bad_shapes(case):
    with pytest.raises(ValueError, match=GOT_EXPECTED):
        BAD_SHAPES[case](layer())


def test_non_contiguous_parameter():
    # a parameter made of a transposed tensor: a clear refusal or the right result, never a
    # result computed from the wrong layout
    m = layer()
    ref = torch.nn.MultiheadAttention(8, 2)
    w = torch.randn(8, 24).t()
    m.in_proj_weight = torch.nn.Parameter(w)
    ref.in_proj_weight = torch.nn.Parameter(w.contiguous())
    ref.load_state_dict(m.state_dict())
    try:
        out = m(X, X, X)[0]
    except ValueError as e:
        assert "contiguous" in str(e), str(e)
    else:
        torch.testing.assert_close(out, ref(X, X, X)[0], atol=1e-5, rtol=1e-5)


def test_shape_message_names_the_callers_dimension():
    # batch_first=False: the caller's key is [S, N, kdim]; a batch size that differs from the
    # query's is key.shape[1] (not the library's internal [N, S, kdim] view's shape[0])
    with pytest.raises(ValueError) as e:
        layer()(X, torch.randn(5, 3, 8), torch.randn(5, 3, 8))
    assert "shape[1]" in str(e.value), str(e.value)


def test_seed_module_bad_shapes():
    m = mha.MultiHeadAttention(8, 2)
    for x in (torch.randn(3, 8), torch.randn(1, 2, 3, 8), torch.randn(1, 3, 6)):
        with pytest.raises(ValueError, match=GOT_EXPECTED):
            m(x)
    x = torch.randn(2, 3, 8)
    for mask in (torch.ones(3, 4), torch.ones(3, 1, 3, 3), torch.ones(2, 3, 3, 3),
                 torch.ones(1, 1, 1, 1, 3)):
        with pytest.raises(ValueError, match=GOT_EXPECTED):
            m(x, mask)


SDPA_BAD = {
    "head dims": lambda q: sdpa(q, torch.randn(2, 3, 5, 7), torch.randn(2, 3, 5, 8)),
    "key/value lengths": lambda q: sdpa(q, torch.randn(2, 3, 5, 8), torch.randn(2, 3, 6, 8)),
    "leading dims": lambda q: sdpa(q, torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8)),
    "mask": lambda q: sdpa(q, q, q, attn_mask=torch.ones(3, 3, dtype=torch.bool)),
    "mask rank": lambda q: sdpa(q, q, q, attn_mask=torch.ones(1, 2, 3, 4, 4)),
    "dropout_p < 0": lambda q: sdpa(q, q, q, dropout_p=-0.1),
    "scale nan": lambda q: sdpa(q, q, q, scale=float("nan")),
}


@pytest.mark.parametrize("case", list(SDPA_BAD))
def test_sdpa_bad_arguments(case):
    with pytest.raises(ValueError, match=GOT_EXPECTED):
        SDPA_BAD[case](torch.randn(2, 3, 4, 8))


def test_errors_leave_the_layer_usable():
    # a refused call changes nothing: the next good call gives PyTorch's result
    m = layer()
    ref = torch.nn.MultiheadAttention(8, 2)
    ref.load_state_dict(m.state_dict())
    for case in BAD_SHAPES.values():
        with pytest.raises(ValueError):
            case(m)
    torch.testing.assert_close(m(X, X, X)[0], ref(X, X, X)[0], atol=1e-5, rtol=1e-5)


def test_from_file_errors(tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(1)
    path = str(tmp_path / "layer.safetensors")
    save_file(torch.nn.MultiheadAttention(8, 2).state_dict(), path)
    with pytest.raises(ValueError, match="num_heads"):  # not recorded, not passed
        mha.MultiheadAttention.from_file(path)
    save_file(torch.nn.MultiheadAttention(8, 2).state_dict(), path, metadata={"num_heads": "2"})
    with pytest.raises(ValueError, match="num_heads"):  # recorded 2, passed 4
        mha.MultiheadAttention.from_file(path, num_heads=4)
    with pytest.raises(OSError):
        mha.MultiheadAttention.from_file(str(tmp_path / "missing.safetensors"), num_heads=2)


# -- the type: a ValueError and a RuntimeError ------------------------------------------------

@pytest.mark.parametrize("case", ["module shape", "sdpa scale", "flash head dim", "library status",
                                  "numpy dtype"])
def test_argument_errors_are_value_errors_and_runtime_errors(case):
    # mha.ArgumentError: a ValueError (mha's documented type) and a RuntimeError (what PyTorch's
    # and FlashAttention's own checks raise), so that code written for either catches it
    import numpy as np
    q = torch.randn(1, 4, 2, 8)
    calls = {
        "module shape": lambda: layer()(X, X, torch.randn(4, 2, 7)),
        "sdpa scale": lambda: sdpa(q, q, q, scale=float("nan")),
        "flash head dim": lambda: mha.flash_attn_func(q[..., :0], q[..., :0], q[..., :0]),
        "library status": lambda: mha.flash_attn_func(q, q, q, dropout_p=1.5),
        "numpy dtype": lambda: mha.attention(*(np.zeros((1, 2, 4, 8), np.float64),) * 3),
    }
    with pytest.raises(RuntimeError, match=GOT_EXPECTED) as e:
        calls[case]()
    assert isinstance(e.value, ValueError) and isinstance(e.value, mha.ArgumentError)
    assert isinstance(e.value, mha.Error) and type(e.value) is mha.ArgumentError
