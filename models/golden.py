"""NumPy golden model: the exact integer arithmetic of DESIGN.md §1.

Every op is a pure function on integer NHWC arrays returning int64; :func:`run` chains them
over a :class:`~models.artifact.Model` (each layer's op from the op table,
:data:`models.ops.OPS`) and can return every layer's output (the *taps*) so that a hardware
mismatch can be traced to the first layer that differs.

Exactness and speed. The results are exact integers. The 1x1 convolution and its requant run
on float64 (BLAS matmul, the requant folded into the weights, see :func:`conv1x1`) when, and
only when, every intermediate value is an integer below 2**53 times a power of two, which
float64 represents exactly whatever the order of summation: the kernel bounds its
intermediates from its actual operands first and falls back to int64 otherwise. For a valid
artifact the bound always holds: the validator proves every accumulator within int32
(|acc| < 2**31; every partial sum is at most sum |w| * max x < 2**32), and
``|acc| * m + 2**(sh-1) < 2**31 * 2**16 + 2**46 < 2**48``. :func:`run` takes the batch
through all layers a cache-sized chunk of images at a time, chunks on a thread per CPU; the
shift is slicing per run of channels with the same (dy, dx); nothing loops over single
images.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .ops import OPS, get as get_op

__all__ = ["replicate", "shift", "conv1x1", "requant", "round_shift", "maxpool2", "gap", "run",
           "run_layer", "check_images", "channel_attention", "dynamic_attention",
           "dynamic_conv1x1", "spatial_attention", "scale_by"]

#: Integers of magnitude below this are exact in float64, and so are their sums and products
#: while they stay below it.
EXACT = 1 << 53


def _carrier(x):
    """The dtype an op returns for input ``x``: float64 when the batch is carried in float64
    (:func:`run` does, see there), else int64."""
    return np.float64 if np.asarray(x).dtype == np.float64 else np.int64


def replicate(x, factor):
    """``out[..., e*C + c] = x[..., c]`` for ``e < factor``."""
    x = np.asarray(x)
    return np.tile(x, (1,) * (x.ndim - 1) + (int(factor),)).astype(_carrier(x), copy=False)


def _shift_index(h, w, shifts):
    """Flat source index of every output value of :func:`shift` in an ``[H*W*C + 1]`` row
    (the input pixel's ``(y * W + x) * C + c``, or ``H*W*C``, a zero, outside the image)."""
    c = len(shifts)
    ys = np.arange(h)[:, None, None] + shifts[None, None, :, 0]
    xs = np.arange(w)[None, :, None] + shifts[None, None, :, 1]
    inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    src = (ys * w + xs) * c + np.arange(c)[None, None, :]
    return np.where(inside, src, h * w * c).reshape(-1)


def shift(x, shifts):
    """Per-channel spatial shift with zero padding.

    ``out[n, y, x, c] = in[n, y + dy[c], x + dx[c], c]`` when inside the image, else 0
    (dy = +1 takes from the row below).

    One gather per batch: every output value's source index (or a zero appended to each
    image) is computed once from the shifts, so the cost does not grow with the number of
    distinct shifts.

    Parameters
    ----------
    x : ndarray [N, H, W, C]
    shifts : ndarray [C, 2]
        (dy, dx) per channel; any magnitude (a shift of the image size or more gives 0).
    """
    x = np.asarray(x)
    n, h, w, c = x.shape
    shifts = np.asarray(shifts, np.int64).reshape(c, 2)
    rows = np.zeros((n, h * w * c + 1), _carrier(x))
    rows[:, :-1] = x.reshape(n, h * w * c)
    return rows[:, _shift_index(h, w, shifts)].reshape(n, h, w, c)


def _absmax(a):
    return int(np.abs(a).max()) if a.size else 0


def round_shift(acc, m, sh):
    """``(acc * m + (1 << (sh - 1))) >> sh``: requant before its clamp.

    The shift is arithmetic, i.e. floor division by ``2**sh``, also for a negative
    accumulator (``-3, m=1, sh=1`` gives ``(-3 + 1) >> 1 = -1``); ties round up.

    Parameters
    ----------
    acc : array of int
    m, sh : int or array of int
        Broadcast against ``acc``; ``sh >= 1``.

    Returns
    -------
    ndarray of int64
    """
    acc = np.asarray(acc, np.int64)
    m = np.asarray(m, np.int64)
    sh = np.asarray(sh, np.int64)
    return (acc * m + (np.int64(1) << (sh - 1))) >> sh


def requant(acc, m, sh, act_bits):
    """``clamp((acc * m + (1 << (sh - 1))) >> sh, 0, 2**act_bits - 1)`` with floor shift.

    Parameters
    ----------
    acc : array of int
    m, sh : int or array of int
        Broadcast against ``acc`` (per output channel on its last axis).
    act_bits : int

    Returns
    -------
    ndarray of int64
    """
    return np.clip(round_shift(acc, m, sh), 0, (1 << act_bits) - 1)


#: Row block of :func:`_matmul_f64`: OpenBLAS runs a product of at most 2**18
#: multiply-accumulates on one thread, and on a small or busy machine thread start-up costs
#: more than it saves on products this small.
BLAS_BLOCK_MACS = 1 << 18


def _matmul_f64(x, wt):
    """``x @ wt`` in float64 BLAS, in row blocks small enough to run single-threaded."""
    rows = max(1, BLAS_BLOCK_MACS // max(1, wt.shape[0] * wt.shape[1]))
    x = x.astype(np.float64, copy=False)  # the float64 carrier of run() is used as it is
    if x.shape[0] <= rows:
        return x @ wt
    out = np.empty((x.shape[0], wt.shape[1]), np.float64)
    for r in range(0, x.shape[0], rows):
        np.matmul(x[r:r + rows], wt, out=out[r:r + rows])
    return out


def conv1x1(x, weight, bias, stride=1, m=None, sh=None, act_bits=8):
    """1×1 convolution with optional stride, then requant (unless ``m`` is None).

    ``acc[n, y, x, o] = bias[o] + sum_i weight[o, i] * x[n, s*y, s*x, i]``, so
    ``H_out = ceil(H / s)``; then ``clamp((acc * m[o] + 2**(sh[o]-1)) >> sh[o], 0,
    2**act_bits - 1)``.

    A float64 input (the carrier :func:`run` uses) gives a float64 result holding the same
    integers; any other integer input gives int64.

    Exact float64 path. Let ``B = max|x| * max_o sum_i |weight[o, i]| + max|bias|``, which
    bounds every partial sum whatever the order of summation. Without requant it is used
    when ``B < 2**53``. With requant, when ``B * max(m) + 2**(max(sh)-1) < 2**53``, the
    requant is folded into the product: with ``s[o] = m[o] * 2**-sh[o]`` (exact),
    ``sum_i x[i] * (weight[o, i] * s[o]) + (bias[o] * s[o] + 0.5)`` equals
    ``(acc * m[o] + 2**(sh[o]-1)) * 2**-sh[o]`` exactly, because every term and every partial
    sum is an integer below 2**53 times ``2**-sh[o]``, which float64 represents exactly.
    After clamping to ``[0, 2**act_bits - 1]`` every value is non-negative, so truncating
    to int64 is the floor, i.e. the arithmetic right shift. Otherwise: int64 arithmetic.

    Returns
    -------
    ndarray of int64 [N, H_out, W_out, cout]
        The requantized activations, or the raw accumulator when ``m`` is None (the
        classifier's logits).
    """
    x = np.asarray(x)
    carrier = _carrier(x)
    xs = x[:, ::stride, ::stride, :] if stride != 1 else x
    n, h, w, c = xs.shape
    wt = np.asarray(weight, np.int64)
    b = np.asarray(bias, np.int64)
    cout = wt.shape[0]
    flat = xs.reshape(-1, c)
    xmax = max(int(flat.max()), -int(flat.min())) if flat.size else 0
    bound = xmax * (int(np.abs(wt).sum(1).max()) if wt.size else 0) + _absmax(b)
    if m is None:
        if bound < EXACT:
            acc = _matmul_f64(flat, np.ascontiguousarray(wt.T, np.float64))
            acc += b
            return acc.astype(carrier, copy=False).reshape(n, h, w, cout)
        return (flat.astype(np.int64) @ wt.T + b).astype(carrier).reshape(n, h, w, cout)
    m = np.asarray(m, np.int64)
    sh = np.asarray(sh, np.int64)
    if (sh.size and m.size and int(sh.min()) >= 1
            and bound * _absmax(m) + (1 << (int(sh.max()) - 1)) < EXACT):
        scale = np.broadcast_to(np.ldexp(m.astype(np.float64), -sh), (cout,))
        q = _matmul_f64(flat, np.ascontiguousarray(wt.T, np.float64) * scale)
        q += b * scale + 0.5
        np.floor(q, out=q)  # the floor of the arithmetic shift
        # The clamp, in place (np.clip's dispatch costs more than these two passes).
        np.maximum(q, 0, out=q)
        np.minimum(q, (1 << act_bits) - 1, out=q)
        return q.astype(carrier, copy=False).reshape(n, h, w, cout)
    acc = (flat.astype(np.int64) @ wt.T + b).reshape(n, h, w, cout)
    return requant(acc, m, sh, act_bits).astype(carrier, copy=False)


def maxpool2(x):
    """2×2 max pooling, stride 2, floor of odd sizes (the last row/column of an odd size is
    dropped)."""
    x = np.asarray(x)
    _, h, w, _ = x.shape
    h2, w2 = 2 * (h // 2), 2 * (w // 2)
    top = np.maximum(x[:, 0:h2:2, 0:w2:2], x[:, 0:h2:2, 1:w2:2])
    bottom = np.maximum(x[:, 1:h2:2, 0:w2:2], x[:, 1:h2:2, 1:w2:2])
    return np.maximum(top, bottom).astype(_carrier(x), copy=False)


def gap(x, m, sh, act_bits):
    """Global sum pooling followed by one requant for the whole tensor; output [N, 1, 1, C]."""
    x = np.asarray(x)
    s = x.sum(axis=(1, 2), keepdims=True, dtype=np.int64)
    return requant(s, m, sh, act_bits).astype(_carrier(x), copy=False)


# --- version 2: attention ---------------------------------------------------------------

def _pool(xi, m, sh, act_bits, step=1):
    """The gap rule on ``[N, H, W, C]``: per-image channel sums of the pixels with
    ``y % step == 0`` and ``x % step == 0``, requantized and clamped; ``[N, C]``."""
    return requant(xi[:, ::step, ::step, :].sum(axis=(1, 2), dtype=np.int64), m, sh, act_bits)


def _table(lut, logit, lo, hi, m, sh):
    """``lut[clamp(round_shift(logit, m, sh), lo, hi) - lo]``: a nonlinearity by table."""
    index = np.clip(round_shift(logit, m, sh), lo, hi) - lo
    return np.asarray(lut, np.int64)[index]


def scale_by(xi, a):
    """``(x * a + 128) >> 8``: scaling by an attention value ``a`` in [0, 256] (256 is 1)."""
    return (xi * a + 128) >> 8


def channel_attention(x, layer, act_bits):
    """ECA: ``out[y, x, c] = (x * a[c] + 128) >> 8``, ``a`` from the pooled channels by a
    1-D convolution across channels, requant and the sigmoid table (DESIGN.md §1)."""
    carrier = _carrier(x)
    xi = np.asarray(x).astype(np.int64)
    c = xi.shape[3]
    p = _pool(xi, layer.pool_m, layer.pool_sh, act_bits)
    k = len(layer.kernel)
    half = (k - 1) // 2
    padded = np.pad(p, ((0, 0), (half, half)))  # p = 0 outside [0, C)
    z = np.full_like(p, int(layer.bias))
    for j, tap in enumerate(np.asarray(layer.kernel, np.int64).tolist()):
        z += tap * padded[:, j:j + c]
    a = _table(layer.lut, z, -128, 127, layer.z_m, layer.z_sh)
    return scale_by(xi, a[:, None, None, :]).astype(carrier, copy=False)


def dynamic_attention(x, layer, act_bits):
    """The kernel attention ``pi[N, K]`` of a ``dynamic_conv1x1`` (integer softmax: the exp
    table of the max-subtracted logits, then one floor division; DESIGN.md §1)."""
    xi = np.asarray(x).astype(np.int64)
    p = _pool(xi, layer.att_pool_m, layer.att_pool_sh, act_bits, layer.att_step)
    r = p @ np.asarray(layer.att_weight, np.int64).T + np.asarray(layer.att_bias, np.int64)
    d = r - r.max(axis=1, keepdims=True)
    e = _table(layer.exp_lut, d, -255, 0, layer.att_m, layer.att_sh)
    return (e * 256) // e.sum(axis=1, keepdims=True)


def dynamic_conv1x1(x, layer, act_bits):
    """Dynamic 1×1 convolution: per image, the K kernels mixed by :func:`dynamic_attention`,
    ``W = (sum_k pi[k] * weight[k] + 128) >> 8`` (and B alike), then exactly conv1x1."""
    carrier = _carrier(x)
    xi = np.asarray(x).astype(np.int64)
    pi = dynamic_attention(xi, layer, act_bits)
    w = (np.einsum("nk,koi->noi", pi, np.asarray(layer.weight, np.int64)) + 128) >> 8
    b = (pi @ np.asarray(layer.bias, np.int64) + 128) >> 8
    s = layer.stride
    xs = xi[:, ::s, ::s, :]
    n, h, ww, c = xs.shape
    acc = np.matmul(xs.reshape(n, h * ww, c), w.transpose(0, 2, 1)) + b[:, None, :]
    acc = acc.reshape(n, h, ww, -1)
    out = acc if layer.m is None else requant(acc, layer.m, layer.sh, act_bits)
    return out.astype(carrier, copy=False)


def spatial_attention(x, layer, act_bits):
    """NL-SAM: ``out[y, x, c] = (x * s[y, x] + 128) >> 8``, ``s`` the sigmoid table of each
    pixel's dot product with the projected global context (docs/format.md)."""
    carrier = _carrier(x)
    xi = np.asarray(x).astype(np.int64)
    p = _pool(xi, layer.pool_m, layer.pool_sh, act_bits)
    v = p @ np.asarray(layer.ctx_weight, np.int64).T + np.asarray(layer.ctx_bias, np.int64)
    u = np.clip(round_shift(v, layer.ctx_m, layer.ctx_sh), -128, 127)
    z = np.einsum("nhwc,nc->nhw", xi, u) + int(layer.bias)
    s = _table(layer.lut, z, -128, 127, layer.z_m, layer.z_sh)
    return scale_by(xi, s[..., None]).astype(carrier, copy=False)


def run_layer(layer, x, act_bits):
    """Apply one :class:`~models.layer.Layer` to an integer NHWC batch (its op's golden)."""
    return get_op(layer.op).golden(layer, x, act_bits)


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


def chunk_images(model, budget=1 << 17):
    """Images per chunk in :func:`run`: the largest feature map of a chunk holds about
    ``budget`` values, so that a chunk's layers stay in the CPU cache (and BLAS calls stay
    small enough to run single-threaded)."""
    largest = max(h * w * c for h, w, c in model.shapes())
    return max(1, budget // largest)


def default_threads():
    """Worker threads of :func:`run`: the CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def run(model, images, taps=False, chunk=None, threads=None):
    """Run the integer network.

    Parameters
    ----------
    model : Model
    images : ndarray [N, H, W, C]
        Unsigned pixels of ``model.input_bits`` bits.
    taps : bool
        Also return every layer's output.
    chunk : int, optional
        Images per chunk (default :func:`chunk_images`). The batch runs through every layer
        one chunk at a time.
    threads : int, optional
        Chunks run on this many threads at once (default :func:`default_threads`; NumPy and
        BLAS release the GIL). Chunks are independent, so neither ``chunk`` nor ``threads``
        changes a single value.

    Returns
    -------
    logits : ndarray of int64 [N, classes]
    outputs : list of ndarray, only when ``taps``
        ``outputs[i]`` is layer i's output, int64 NHWC.
    """
    # The batch is carried in float64 from layer to layer: every value is an integer far
    # below 2**53 (the validator bounds every accumulator by int32), so copies, maxima and the
    # bounded BLAS products of conv1x1 are exact, and no layer converts int64 <-> float64.
    x = check_images(model, images).astype(np.float64)
    step = int(chunk or chunk_images(model))
    ops = [OPS[layer.op] for layer in model.layers]

    def one_chunk(start):
        y, outs = x[start:start + step], []
        for op, layer in zip(ops, model.layers):
            y = op.golden(layer, y, model.act_bits)
            if taps:
                outs.append(y)
        logits = y.reshape(y.shape[0], int(np.prod(y.shape[1:]))).astype(np.int64)
        return logits, [o.astype(np.int64) for o in outs]

    starts = range(0, max(len(x), 1), step)
    threads = min(int(threads or default_threads()), len(starts))
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(one_chunk, starts))
    else:
        results = [one_chunk(s) for s in starts]
    logits = np.concatenate([r[0] for r in results])
    if not taps:
        return logits
    return logits, [np.concatenate([r[1][i] for r in results]) for i in range(len(ops))]
