"""flash_ref - FlashAttention's attention_ref semantics in float64 PyTorch, the oracle of
test_py_flash and test_py_kvcache (written from FlashAttention's tests/test_flash_attn.py, not
from mha): q / sqrt(d) (or softmax_scale) then k; softcap tanh; ALiBi bias
-slope * |i + S - L - j|; window and causal aligned bottom-right; grouped-query attention by
repeat_interleave of k and v's heads. A row with no allowed key gives out 0 and lse -inf (mha's
choice; FlashAttention's kernels give out 0 too).
"""
import torch


def attention_ref(q, k, v, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                  softmax_scale=None, keep=None, dropout_p=0.0, key_lengths=None):
    """q [B, L, H, D], k [B, S, Hkv, D], v [B, S, Hkv, Dv] (any float dtype, autograd flows).

    keep: bool [B, H, L, S], the kept weights under dropout (survivors scaled by
    1 / (1 - dropout_p)). key_lengths: int [B], batch b sees only its first key_lengths[b] keys
    and aligns bottom-right to them (a KV cache's filled prefix); default S.
    Returns (out [B, L, H, Dv], lse [B, H, L], probs [B, H, L, S] after dropout), float64."""
    q, k, v = q.double(), k.double(), v.double()
    B, L, H, D = q.shape
    S, g = k.shape[1], H // k.shape[2]
    k, v = k.repeat_interleave(g, dim=2), v.repeat_interleave(g, dim=2)
    scale = D ** -0.5 if softmax_scale is None else softmax_scale
    s = torch.einsum("blhd,bshd->bhls", q * scale, k)
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    lens = torch.full((B,), S) if key_lengths is None else torch.as_tensor(key_lengths).long()
    lens = lens.view(B, 1, 1, 1)
    i = torch.arange(L).view(1, 1, L, 1)
    j = torch.arange(S).view(1, 1, 1, S)
    pos = i + lens - L  # query row i's position among the keys (bottom-right)
    if alibi_slopes is not None:
        sl = alibi_slopes.double()
        sl = sl.view(1, H, 1, 1) if sl.dim() == 1 else sl.view(B, H, 1, 1)
        s = s - sl * (pos - j).abs()
    allowed = j < lens
    if causal:
        allowed = allowed & (j <= pos)
    left, right = window_size
    if left >= 0:
        allowed = allowed & (j >= pos - left)
    if right >= 0:
        allowed = allowed & (j <= pos + right)
    s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # a row with no key: 0
    if keep is not None:
        p = p * keep / (1.0 - dropout_p)
    return torch.einsum("bhls,bshd->blhd", p, v), lse, p
