"""NumPy golden model: the exact integer arithmetic of DESIGN.md §1.

Every op is a pure function on int64 NHWC arrays; :func:`run` chains them over a
:class:`~models.artifact.Model` and can return every layer's output (the *taps*) so that a
hardware mismatch can be traced to the first layer that differs. There are no floats here.
"""

from __future__ import annotations

import numpy as np

from .artifact import ArtifactError

__all__ = ["replicate", "shift", "conv1x1", "requant", "maxpool2", "gap", "run",
           "run_layer", "check_images"]


def replicate(x, factor):
    """``out[..., e*C + c] = x[..., c]`` for ``e < factor``."""
    return np.concatenate([x] * factor, axis=-1)


def shift(x, shifts):
    """Per-channel spatial shift with zero padding.

    ``out[n, y, x, c] = in[n, y + dy[c], x + dx[c], c]`` when inside the image, else 0.

    Parameters
    ----------
    x : ndarray [N, H, W, C]
    shifts : ndarray [C, 2]
        (dy, dx) per channel.
    """
    n, h, w, c = x.shape
    shifts = np.asarray(shifts, np.int64)
    r = int(np.abs(shifts).max()) if shifts.size else 0
    pad = np.zeros((n, h + 2 * r, w + 2 * r, c), x.dtype)
    pad[:, r:r + h, r:r + w, :] = x
    out = np.empty_like(x)
    for (dy, dx) in {tuple(s) for s in shifts.tolist()}:
        sel = np.nonzero((shifts[:, 0] == dy) & (shifts[:, 1] == dx))[0]
        out[..., sel] = pad[:, r + dy:r + dy + h, r + dx:r + dx + w, :][..., sel]
    return out


def requant(acc, m, sh, act_bits):
    """``clamp((acc * m + (1 << (sh - 1))) >> sh, 0, 2**act_bits - 1)`` with floor shift."""
    acc = np.asarray(acc, np.int64)
    m = np.asarray(m, np.int64)
    sh = np.asarray(sh, np.int64)
    q = (acc * m + (np.int64(1) << (sh - 1))) >> sh
    return np.clip(q, 0, (1 << act_bits) - 1)


def conv1x1(x, weight, bias, stride=1, m=None, sh=None, act_bits=8):
    """1×1 convolution with optional stride, then requant (unless ``m`` is None).

    Returns the raw int32-range accumulator when ``m`` is None (the classifier).
    """
    xs = x[:, ::stride, ::stride, :]
    n, h, w, c = xs.shape
    acc = xs.reshape(-1, c).astype(np.int64) @ np.asarray(weight, np.int64).T
    acc = acc + np.asarray(bias, np.int64)
    acc = acc.reshape(n, h, w, -1)
    if m is None:
        return acc
    return requant(acc, m, sh, act_bits)


def maxpool2(x):
    """2×2 max pooling, stride 2, floor of odd sizes."""
    n, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, :2 * h2, :2 * w2, :].reshape(n, h2, 2, w2, 2, c)
    return x.max(axis=(2, 4))


def gap(x, m, sh, act_bits):
    """Global sum pooling followed by one requant for the whole tensor; output [N, 1, 1, C]."""
    s = x.astype(np.int64).sum(axis=(1, 2), keepdims=True)
    return requant(s, m, sh, act_bits)


def run_layer(layer, x, act_bits):
    """Apply one :class:`~models.artifact.Layer` to an int64 batch."""
    if layer.op == "replicate":
        return replicate(x, layer.factor)
    if layer.op == "shift":
        return shift(x, layer.shifts)
    if layer.op == "conv1x1":
        return conv1x1(x, layer.weight, layer.bias, layer.stride, layer.m, layer.sh, act_bits)
    if layer.op == "maxpool2":
        return maxpool2(x)
    if layer.op == "gap":
        return gap(x, layer.m, layer.sh, act_bits)
    raise ArtifactError(f"unknown op {layer.op!r}")


def check_images(model, images):
    """Validate an image batch for ``model`` and return it as int64 ``[N, H, W, C]``.

    Raises
    ------
    ValueError
        Wrong rank, shape, dtype range, or pixel values above ``input.bits``.
    """
    images = np.asarray(images)
    h, w, c = model.input_shape
    if images.ndim == 3 and c == 1:
        images = images[..., None]
    if images.ndim != 4 or tuple(images.shape[1:]) != (h, w, c):
        raise ValueError(f"images have shape {list(images.shape)}, the model expects "
                         f"[N, {h}, {w}, {c}] (uint8, NHWC)")
    if not np.issubdtype(images.dtype, np.integer):
        raise ValueError(f"images must be integers (uint8 pixels), got dtype {images.dtype}")
    if images.size and (images.min() < 0 or images.max() >= (1 << model.input_bits)):
        raise ValueError(f"pixel values span [{images.min()}, {images.max()}], outside the "
                         f"model's {model.input_bits}-bit input range")
    return images.astype(np.int64)


def run(model, images, taps=False):
    """Run the integer network.

    Parameters
    ----------
    model : Model
    images : ndarray [N, H, W, C]
        Unsigned pixels of ``model.input_bits`` bits.
    taps : bool
        Also return every layer's output.

    Returns
    -------
    logits : ndarray of int64 [N, classes]
    outputs : list of ndarray, only when ``taps``
        ``outputs[i]`` is layer i's output, int64 NHWC.
    """
    x = check_images(model, images)
    outs = []
    for layer in model.layers:
        x = run_layer(layer, x, model.act_bits)
        if taps:
            outs.append(x)
    logits = x.reshape(x.shape[0], -1)
    return (logits, outs) if taps else logits
