"""Integer evaluation in PyTorch: runs an exported artifact with ``torch.int64`` tensors.

This is a second, independent implementation of DESIGN.md §1 (it shares no code with
:mod:`models.golden`, which is NumPy): tensors are NCHW, the shift is ``torch.roll`` plus a
validity mask, the conv is an integer matmul, the maxpool a reshape-max. The verification
pyramid's first level (DESIGN.md §5) is that both agree exactly. The op table
(:data:`models.ops.OPS`) holds both implementations side by side; it shares only the
dispatch, never the arithmetic.
"""

from __future__ import annotations

import numpy as np
import torch

from .ops import OPS

__all__ = ["run_int", "accuracy_int", "roll_shift", "round_shift_t", "replicate_t", "conv1x1_t",
           "maxpool2_t", "gap_t", "channel_attention_t", "dynamic_conv1x1_t",
           "spatial_attention_t"]


def replicate_t(x, factor):
    """``out[:, e*C + c] = x[:, c]`` for ``e < factor`` (channel concatenation)."""
    return torch.cat([x] * int(factor), dim=1)


def roll_shift(x, shifts):
    """``out[:, c, y, x] = x[:, c, y + dy, x + dx]`` inside the image, else 0 (roll + mask).

    Parameters
    ----------
    x : Tensor [N, C, H, W]
    shifts : array-like [C, 2]
    """
    n, c, h, w = x.shape
    out = torch.zeros_like(x)
    ys = torch.arange(h).view(h, 1)
    xs = torch.arange(w).view(1, w)
    for ch, (dy, dx) in enumerate(np.asarray(shifts).tolist()):
        rolled = torch.roll(x[:, ch], shifts=(-dy, -dx), dims=(1, 2))
        valid = (ys + dy >= 0) & (ys + dy < h) & (xs + dx >= 0) & (xs + dx < w)
        out[:, ch] = rolled * valid
    return out


def round_shift_t(acc, m, sh):
    """``(acc * m + (1 << (sh - 1))) >> sh`` on int64 tensors (requant before its clamp).

    ``m``/``sh`` are ints or per-channel arrays (broadcast over N, H, W of an NCHW ``acc``).
    """
    m = torch.as_tensor(np.asarray(m, np.int64))
    sh = torch.as_tensor(np.asarray(sh, np.int64))
    if m.ndim:  # per output channel: broadcast over N, H, W
        m, sh = m.view(1, -1, 1, 1), sh.view(1, -1, 1, 1)
    return torch.bitwise_right_shift(acc * m + torch.bitwise_left_shift(torch.ones_like(sh),
                                                                        sh - 1), sh)


def _requant(acc, m, sh, act_bits):
    return round_shift_t(acc, m, sh).clamp(0, (1 << act_bits) - 1)


def conv1x1_t(x, weight, bias, stride, m, sh, act_bits):
    """Strided 1×1 convolution as an int64 matmul, then requant (raw when ``m`` is None)."""
    xs = x[:, :, ::stride, ::stride]
    wt = torch.as_tensor(np.asarray(weight).astype(np.int64))
    acc = torch.matmul(wt, xs.flatten(2)).view(xs.shape[0], -1, *xs.shape[2:])
    acc = acc + torch.as_tensor(np.asarray(bias).astype(np.int64)).view(1, -1, 1, 1)
    return acc if m is None else _requant(acc, m, sh, act_bits)


def maxpool2_t(x):
    """2×2 max pooling by reshape + amax (odd sizes: the last row/column is dropped)."""
    n, c, h, w = x.shape
    x = x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2)
    return x.amax(dim=(3, 5))


def gap_t(x, m, sh, act_bits):
    """Sum over H and W, then one requant for the whole tensor."""
    return _requant(x.sum(dim=(2, 3), keepdim=True), m, sh, act_bits)


# --- version 2: attention (NCHW, int64 tensors; the arithmetic written afresh) ----------

def _i64(a):
    return torch.as_tensor(np.asarray(a).astype(np.int64))


def _rs(v, m, sh):
    """``(v * m + 2**(sh-1)) >> sh`` for scalar ``m``, ``sh`` (Python ints)."""
    return torch.bitwise_right_shift(v * int(m) + (1 << (int(sh) - 1)), int(sh))


def _pooled(x, m, sh, act_bits, step=1):
    """[N, C] channel sums over pixels with y % step == 0 and x % step == 0, requantized."""
    s = x[:, :, ::step, ::step].sum(dim=(2, 3))
    return _rs(s, m, sh).clamp(0, (1 << act_bits) - 1)


def channel_attention_t(x, layer, act_bits):
    """ECA as a zero-padded 1-D cross-correlation (``unfold`` over channels)."""
    p = _pooled(x, layer.pool_m, layer.pool_sh, act_bits)
    k = len(layer.kernel)
    win = torch.nn.functional.pad(p, ((k - 1) // 2, (k - 1) // 2)).unfold(1, k, 1)  # [N, C, k]
    z = (win * _i64(layer.kernel)).sum(-1) + int(layer.bias)
    idx = _rs(z, layer.z_m, layer.z_sh).clamp(-128, 127) + 128
    a = _i64(layer.lut)[idx]
    return torch.bitwise_right_shift(x * a[:, :, None, None] + 128, 8)


def dynamic_conv1x1_t(x, layer, act_bits):
    """Dynamic conv: integer softmax over K kernels (exp table, floor division), mixed
    kernel per image, then a batched int64 matmul."""
    p = _pooled(x, layer.att_pool_m, layer.att_pool_sh, act_bits, layer.att_step)
    r = torch.matmul(p, _i64(layer.att_weight).T) + _i64(layer.att_bias)
    d = r - r.amax(dim=1, keepdim=True)
    e = _i64(layer.exp_lut)[_rs(d, layer.att_m, layer.att_sh).clamp(-255, 0) + 255]
    pi = torch.div(e * 256, e.sum(dim=1, keepdim=True), rounding_mode="floor")
    wk = _i64(layer.weight)                                    # [K, cout, cin]
    w = torch.bitwise_right_shift(torch.tensordot(pi, wk, dims=1) + 128, 8)  # [N, cout, cin]
    b = torch.bitwise_right_shift(torch.matmul(pi, _i64(layer.bias)) + 128, 8)  # [N, cout]
    xs = x[:, :, ::layer.stride, ::layer.stride]
    n, c, h, wd = xs.shape
    acc = torch.bmm(w, xs.reshape(n, c, h * wd)) + b[:, :, None]
    acc = acc.view(n, -1, h, wd)
    return acc if layer.m is None else _requant(acc, layer.m, layer.sh, act_bits)


def spatial_attention_t(x, layer, act_bits):
    """NL-SAM: projected global context, per-pixel dot product, table, scaling."""
    p = _pooled(x, layer.pool_m, layer.pool_sh, act_bits)
    v = torch.matmul(p, _i64(layer.ctx_weight).T) + _i64(layer.ctx_bias)
    u = _rs(v, layer.ctx_m, layer.ctx_sh).clamp(-128, 127)     # [N, C]
    z = (x * u[:, :, None, None]).sum(dim=1) + int(layer.bias)  # [N, H, W]
    s = _i64(layer.lut)[_rs(z, layer.z_m, layer.z_sh).clamp(-128, 127) + 128]
    return torch.bitwise_right_shift(x * s[:, None] + 128, 8)


def run_int(model, images, batch=4096):
    """Run an exported :class:`~models.artifact.Model` in integer PyTorch.

    Each layer runs its op's PyTorch function from the op table
    (:meth:`models.ops.Op.torch`, which calls the functions of this module).

    Parameters
    ----------
    model : Model
    images : ndarray of uint8 [N, H, W, C] (or [N, H, W] for one channel)
    batch : int
        Images per chunk (bounds memory).

    Returns
    -------
    ndarray of int64 [N, classes]
        The raw classifier accumulators (logits).
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    ops = [OPS[layer.op] for layer in model.layers]
    outs = []
    for start in range(0, len(images), batch):
        x = torch.as_tensor(images[start:start + batch].astype(np.int64)).permute(0, 3, 1, 2)
        x = x.contiguous()
        for op, layer in zip(ops, model.layers):
            x = op.torch(layer, x, model.act_bits)
        outs.append(x.flatten(1))
    return torch.cat(outs).numpy() if outs else np.zeros((0, len(model.classes)), np.int64)


def accuracy_int(model, images, labels):
    """Top-1 accuracy of the integer model (ties go to the lowest class index)."""
    logits = run_int(model, images)
    return float((logits.argmax(axis=1) == np.asarray(labels)).mean())
