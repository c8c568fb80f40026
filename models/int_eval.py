"""Integer evaluation in PyTorch: runs an exported artifact with ``torch.int64`` tensors.

This is a second, independent implementation of DESIGN.md §1 (it shares no code with
:mod:`models.golden`, which is NumPy): tensors are NCHW, the shift is ``torch.roll`` plus a
validity mask, the conv is an integer matmul, the maxpool a reshape-max. The verification
pyramid's first level (DESIGN.md §4) is that both agree exactly.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["run_int", "accuracy_int", "roll_shift"]


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


def _requant(acc, m, sh, act_bits):
    m = torch.as_tensor(np.asarray(m, np.int64))
    sh = torch.as_tensor(np.asarray(sh, np.int64))
    if m.ndim:  # per output channel: broadcast over N, H, W
        m, sh = m.view(1, -1, 1, 1), sh.view(1, -1, 1, 1)
    q = torch.bitwise_right_shift(acc * m + torch.bitwise_left_shift(torch.ones_like(sh),
                                                                     sh - 1), sh)
    return q.clamp(0, (1 << act_bits) - 1)


def run_int(model, images, batch=4096):
    """Run an exported :class:`~models.artifact.Model` in integer PyTorch.

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
    outs = []
    for start in range(0, len(images), batch):
        x = torch.as_tensor(images[start:start + batch].astype(np.int64)).permute(0, 3, 1, 2)
        x = x.contiguous()
        for layer in model.layers:
            if layer.op == "replicate":
                x = torch.cat([x] * layer.factor, dim=1)
            elif layer.op == "shift":
                x = roll_shift(x, layer.shifts)
            elif layer.op == "conv1x1":
                xs = x[:, :, ::layer.stride, ::layer.stride]
                wt = torch.as_tensor(layer.weight.astype(np.int64))
                acc = torch.matmul(wt, xs.flatten(2)).view(xs.shape[0], -1, *xs.shape[2:])
                acc = acc + torch.as_tensor(layer.bias.astype(np.int64)).view(1, -1, 1, 1)
                x = acc if layer.m is None else _requant(acc, layer.m, layer.sh, model.act_bits)
            elif layer.op == "maxpool2":
                n, c, h, w = x.shape
                x = x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2)
                x = x.amax(dim=(3, 5))
            elif layer.op == "gap":
                s = x.sum(dim=(2, 3), keepdim=True)
                x = _requant(s, layer.m, layer.sh, model.act_bits)
            else:
                raise ValueError(f"unknown op {layer.op!r}")
        outs.append(x.flatten(1))
    return torch.cat(outs).numpy() if outs else np.zeros((0, len(model.classes)), np.int64)


def accuracy_int(model, images, labels):
    """Top-1 accuracy of the integer model (ties go to the lowest class index)."""
    logits = run_int(model, images)
    return float((logits.argmax(axis=1) == np.asarray(labels)).mean())
