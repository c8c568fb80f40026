"""Random valid integer shift networks for hardware tests.

Widths (including channel counts that no lane count divides), shifts, stride-2 and maxpool
placements and bit widths are drawn from a seeded RNG. Requant constants are calibrated on
random images so that activations use their range instead of clamping to 0 or saturating,
which would hide arithmetic bugs.
"""

import numpy as np

from . import golden
from .artifact import Layer, Model, validate, to_manifest_and_arrays


def _calibrate(acc, act_bits, rng, per_channel=True):
    """(m, sh) mapping the 99th percentile of positive acc to ~3/4 of the activation range."""
    axis = tuple(range(acc.ndim - 1)) if per_channel else None
    hi = np.percentile(np.maximum(acc, 0), 99, axis=axis)
    hi = np.maximum(np.atleast_1d(hi), 1.0)
    target = 0.75 * ((1 << act_bits) - 1)
    scale = target / hi
    sh = np.full(scale.shape, 24, np.int64)
    m = np.round(scale * (1 << 24)).astype(np.int64)
    # Bring m into [1, 65535] by moving the shift.
    while (m > 65535).any() or (m < 32768).any():
        big, small = m > 65535, (m < 32768) & (sh < 47)
        sh = np.where(big, sh - 1, np.where(small, sh + 1, sh))
        m = np.round(scale * (2.0 ** sh)).astype(np.int64)
        if (sh <= 1).any() or ((m < 32768) & (sh >= 47)).any():
            break
    m = np.clip(m, 1, 65535)
    sh = np.clip(sh, 1, 47)
    # A little jitter so channels differ.
    m = np.clip(m + rng.integers(-50, 50, m.shape), 1, 65535)
    return m, sh


def random_model(rng, *, size=(8, 8), in_channels=1, blocks=2, act_bits=None,
                 weight_bits=None, max_width=20, radius=1, classes=None, calib_images=64,
                 width_multiple=1):
    """A random valid :class:`~models.artifact.Model`.

    Parameters
    ----------
    rng : numpy.random.Generator
    size : (H, W)
    in_channels : int
    blocks : int
        Shift -> conv blocks after the stem.
    act_bits, weight_bits : int, optional
        Drawn from {4, 8} and {2..8} when None.
    max_width : int
        Largest channel count of a hidden conv.
    radius : int
        Largest |dy|, |dx| of a shift.
    width_multiple : int
        Hidden conv widths are multiples of this (1: any width).
    """
    h, w = size
    act_bits = act_bits or int(rng.choice([4, 8]))
    weight_bits = weight_bits or int(rng.integers(2, 9))
    classes = classes or int(rng.integers(2, 11))
    wmax = (1 << (weight_bits - 1)) - 1
    layers = []
    c = in_channels
    images = rng.integers(0, 256, (calib_images, h, w, in_channels))
    x = images.astype(np.int64)
    act = act_bits

    def add(layer):
        nonlocal x, c
        if layer.op == "conv1x1":
            acc = golden.conv1x1(x, layer.weight, layer.bias, layer.stride)
            if layer.m is not None:
                layer.m, layer.sh = (a.astype(t) for a, t in
                                     zip(_calibrate(acc, act, rng), (np.uint16, np.uint8)))
        if layer.op == "gap":
            s = x.sum(axis=(1, 2), keepdims=True)
            mm, ss = _calibrate(s, act, rng, per_channel=False)
            layer.m, layer.sh = int(np.median(mm)), int(np.median(ss))
        x = golden.run_layer(layer, x, act)
        c = x.shape[-1]
        layers.append(layer)

    def width():
        return width_multiple * int(rng.integers(max(1, 3 // width_multiple),
                                                 max_width // width_multiple + 1))

    def conv(cout, stride=1, last=False):
        weight = rng.integers(-wmax, wmax + 1, (cout, c)).astype(np.int8)
        bias = rng.integers(-200, 200, cout).astype(np.int32)
        if last:
            return Layer("conv1x1", stride=stride, weight=weight, bias=bias)
        return Layer("conv1x1", stride=stride, weight=weight, bias=bias,
                     m=np.ones(cout, np.uint16), sh=np.ones(cout, np.uint8))

    def shifts(cc):
        return rng.integers(-radius, radius + 1, (cc, 2)).astype(np.int8)

    # Zero-FLOP stem: replicate(9) -> shift -> conv (an exact 3x3 conv).
    factor = int(rng.choice([1, 2, 9])) if c > 1 else 9
    add(Layer("replicate", factor=factor))
    add(Layer("shift", shifts=shifts(c)))
    add(conv(width()))
    hh, ww = h, w
    for _ in range(blocks):
        add(Layer("shift", shifts=shifts(c)))
        kind = rng.choice(["plain", "stride", "pool"]) if min(hh, ww) >= 4 else "plain"
        if kind == "stride":
            add(conv(width(), stride=2))
            hh, ww = -(-hh // 2), -(-ww // 2)
        else:
            add(conv(width()))
        if kind == "pool":
            add(Layer("maxpool2"))
            hh, ww = hh // 2, ww // 2
    add(Layer("gap", m=1, sh=1))
    add(conv(classes, last=True))
    model = Model(name="random", input_shape=(h, w, in_channels), input_bits=8,
                  act_bits=act_bits, weight_bits=weight_bits,
                  classes=[str(k) for k in range(classes)], layers=layers)
    manifest, arrays = to_manifest_and_arrays(model)
    return validate(manifest, arrays)
