"""test_py_threads_gil.py - the Python package and Python threads: the GIL is released while mha
computes, and one layer used from several threads at once gives the same numbers as used from one.

Run by CTest (mha_add_pytest) with the test venv's Python, PYTHONPATH=python, MHA_LIBRARY set.
"""
import sys
import threading

import torch

import mha


def test_gil_released_during_a_call():
    """A second Python thread keeps running while one thread is inside a long mha call. With
    the GIL held it could not run at all between `started` and `done`: the switch interval is
    set to 2 s, so the interpreter does not take the GIL from the working thread while it runs
    Python, nothing between started.set() and the call releases it (the views are made
    before), and the call (~100 ms or more) would hold it throughout: no iteration at all,
    against ~10^5-10^6 when the GIL is released. The call is the one the package makes
    (mha._torch.CoreCall.forward's mha_attn_forward through mha._lib.lib)."""
    from ctypes import byref
    from mha import _lib
    from mha import _torch as T
    q = torch.rand(1, 8, 4096, 64) - 0.5
    out, lse = torch.empty_like(q), torch.empty(1, 8, 4096)
    tq, to, tl = T.view(q), T.view(out), T.view(lse)
    params, mask = _lib.lib.mha_attn_params_default(), _lib.Mask()
    started, done = threading.Event(), threading.Event()
    status = []
    old, old_switch = mha.get_num_threads(), sys.getswitchinterval()
    mha.set_num_threads(1)  # one core for mha, the other for the counting thread
    c = _lib.ctx()
    sys.setswitchinterval(2.0)
    try:
        def work():
            started.set()
            status.append(_lib.lib.mha_attn_forward(c, byref(params), byref(tq), byref(tq),
                                                    byref(tq), byref(mask), byref(to), byref(tl),
                                                    None))
            done.set()

        t = threading.Thread(target=work)
        t.start()
        started.wait()
        n = 0
        while not done.is_set():
            n += 1
        t.join()
    finally:
        sys.setswitchinterval(old_switch)
        mha.set_num_threads(old)
    assert status == [0]
    want = torch.nn.functional.scaled_dot_product_attention(q[:, :, :64], q, q)
    assert torch.allclose(out[:, :, :64], want, atol=1e-5)
    assert n > 10000, f"the counting thread ran only {n} iterations during the call: GIL held?"


def test_one_layer_from_several_threads():
    """Forward and backward of one layer from 4 threads at once: each thread's output and input
    gradient bitwise equal to the same call made alone."""
    torch.manual_seed(0)
    layer = mha.MultiheadAttention(32, 4, batch_first=True)
    xs = [torch.randn(2, 9, 32) for _ in range(4)]

    def run(x):
        x = x.clone().requires_grad_()
        y, _ = layer(x, x, x)
        (y * y).sum().backward()
        return y.detach(), x.grad

    want = [run(x) for x in xs]
    got = [None] * len(xs)
    errors = []

    def worker(i):
        try:
            for _ in range(10):
                got[i] = run(xs[i])
        except Exception as e:  # surfaced below with the thread's index
            errors.append((i, e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (wy, wg), (gy, gg) in zip(want, got):
        assert torch.equal(wy, gy) and torch.equal(wg, gg)
