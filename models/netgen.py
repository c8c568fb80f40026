"""Random valid integer shift networks for hardware tests.

Widths (including channel counts that no lane count divides), shifts, stride-2 and maxpool
placements and bit widths are drawn from a seeded RNG. Requant constants are calibrated on
random images so that activations use their range instead of clamping to 0 or saturating,
which would hide arithmetic bugs.

With ``attention``, the version-2 ops are placed at random positions too (random k, K, t,
random table contents), their scalars calibrated so that the table indices spread over the
table rather than sitting at one clamp.
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


#: The version-2 ops :func:`random_model` can place.
ATTENTION_OPS = ("channel_attention", "dynamic_conv1x1", "spatial_attention")


def _fit_scale(values, target):
    """Scalar (m, sh) with ``round_shift(v, m, sh)`` spanning about ``[-target, target]`` for
    the 95th percentile of ``|values|``."""
    hi = max(float(np.percentile(np.abs(values), 95)), 1.0)
    scale = target / hi
    sh = 1
    while sh < 47 and scale * (1 << sh) < 32768:
        sh += 1
    m = int(np.clip(round(scale * (1 << sh)), 1, 65535))
    return m, sh


def _table(rng, size, hi):
    return rng.integers(0, hi + 1, size)


def channel_attention_layer(rng, x, act_bits, wmax):
    """A random ``channel_attention`` layer calibrated on the batch ``x``."""
    from . import golden as g
    k = int(rng.choice([1, 3, 5, 7, 9]))
    s = x.sum(axis=(1, 2))
    pm, psh = _calibrate(s[:, None, None, :], act_bits, rng, per_channel=False)
    layer = Layer("channel_attention", pool_m=int(np.median(pm)), pool_sh=int(np.median(psh)),
                  bias=int(rng.integers(-100, 101)),
                  kernel=rng.integers(-wmax, wmax + 1, k).astype(np.int8),
                  lut=_table(rng, 256, 256).astype(np.uint16), z_m=1, z_sh=1)
    p = g._pool(x, layer.pool_m, layer.pool_sh, act_bits)
    padded = np.pad(p, ((0, 0), ((k - 1) // 2, (k - 1) // 2)))
    z = layer.bias + sum(int(t) * padded[:, j:j + p.shape[1]]
                         for j, t in enumerate(layer.kernel.tolist()))
    layer.z_m, layer.z_sh = _fit_scale(z, 110)
    return layer


def spatial_attention_layer(rng, x, act_bits, wmax):
    """A random ``spatial_attention`` layer calibrated on the batch ``x``."""
    from . import golden as g
    c = x.shape[3]
    s = x.sum(axis=(1, 2))
    pm, psh = _calibrate(s[:, None, None, :], act_bits, rng, per_channel=False)
    layer = Layer("spatial_attention", pool_m=int(np.median(pm)), pool_sh=int(np.median(psh)),
                  ctx_weight=rng.integers(-wmax, wmax + 1, (c, c)).astype(np.int8),
                  ctx_bias=rng.integers(-300, 301, c).astype(np.int32),
                  bias=int(rng.integers(-1000, 1001)),
                  lut=_table(rng, 256, 256).astype(np.uint16),
                  ctx_m=1, ctx_sh=1, z_m=1, z_sh=1)
    p = g._pool(x, layer.pool_m, layer.pool_sh, act_bits)
    v = p @ layer.ctx_weight.astype(np.int64).T + layer.ctx_bias
    layer.ctx_m, layer.ctx_sh = _fit_scale(v, 100)
    u = np.clip(g.round_shift(v, layer.ctx_m, layer.ctx_sh), -128, 127)
    z = np.einsum("nhwc,nc->nhw", x, u) + layer.bias
    layer.z_m, layer.z_sh = _fit_scale(z, 110)
    return layer


def dynamic_conv_layer(rng, x, act_bits, wmax, cout, stride=1, last=False):
    """A random ``dynamic_conv1x1`` layer (K in 2..4, t in 1..3) calibrated on ``x``."""
    from . import golden as g
    c = x.shape[3]
    kn = int(rng.integers(2, 5))
    t = int(rng.integers(1, 4))
    s = x[:, ::t, ::t].sum(axis=(1, 2))
    pm, psh = _calibrate(s[:, None, None, :], act_bits, rng, per_channel=False)
    exp_lut = _table(rng, 256, 65535)
    exp_lut[255] = max(1, int(exp_lut[255]))
    layer = Layer("dynamic_conv1x1", stride=stride,
                  weight=rng.integers(-wmax, wmax + 1, (kn, cout, c)).astype(np.int8),
                  bias=rng.integers(-200, 200, (kn, cout)).astype(np.int32),
                  att_step=t, att_pool_m=int(np.median(pm)), att_pool_sh=int(np.median(psh)),
                  att_weight=rng.integers(-wmax, wmax + 1, (kn, c)).astype(np.int8),
                  att_bias=rng.integers(-500, 501, kn).astype(np.int32),
                  exp_lut=exp_lut.astype(np.uint16), att_m=1, att_sh=1)
    p = g._pool(x, layer.att_pool_m, layer.att_pool_sh, act_bits, t)
    r = p @ layer.att_weight.astype(np.int64).T + layer.att_bias
    d = r - r.max(axis=1, keepdims=True)
    layer.att_m, layer.att_sh = _fit_scale(d[d < 0] if (d < 0).any() else d, 150)
    if not last:
        acc = g.dynamic_conv1x1(x, layer, act_bits)  # m is None: the raw accumulator
        m, sh = _calibrate(acc, act_bits, rng)
        layer.m, layer.sh = m.astype(np.uint16), sh.astype(np.uint8)
    return layer


def random_model(rng, *, size=(8, 8), in_channels=1, blocks=2, act_bits=None,
                 weight_bits=None, max_width=20, radius=1, classes=None, calib_images=64,
                 width_multiple=1, attention=()):
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
    attention : iterable of str
        Version-2 ops to place (names from :data:`ATTENTION_OPS`, each at a random block;
        ``dynamic_conv1x1`` replaces a block's conv or the classifier).
    """
    attention = tuple(attention)
    bad = set(attention) - set(ATTENTION_OPS)
    if bad:
        raise ValueError(f"unknown attention op(s) {sorted(bad)}; known: {ATTENTION_OPS}")
    # Where each op goes: after the stem (slot 0) or after block b's conv (slot b + 1);
    # a dynamic conv takes a block's conv (slot b + 1) or the classifier (slot blocks + 1).
    where = {op: int(rng.integers(0, blocks + 2 if op == "dynamic_conv1x1" else blocks + 1))
             for op in attention}
    if where.get("dynamic_conv1x1") == 0:
        where["dynamic_conv1x1"] = blocks + 1
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

    def attend(slot):
        for op in ("channel_attention", "spatial_attention"):
            if where.get(op) == slot:
                make = channel_attention_layer if op == "channel_attention" else \
                    spatial_attention_layer
                add(make(rng, x, act, wmax))

    def conv_or_dynamic(slot, cout, stride=1, last=False):
        if where.get("dynamic_conv1x1") == slot:
            layer = dynamic_conv_layer(rng, x, act, wmax, cout, stride, last)
            if last:
                layers.append(layer)
            else:
                add(layer)
        elif last:
            add(conv(cout, last=True))
        else:
            add(conv(cout, stride=stride))

    # Zero-FLOP stem: replicate(9) -> shift -> conv (an exact 3x3 conv).
    factor = int(rng.choice([1, 2, 9])) if c > 1 else 9
    add(Layer("replicate", factor=factor))
    add(Layer("shift", shifts=shifts(c)))
    add(conv(width()))
    attend(0)
    hh, ww = h, w
    for b in range(blocks):
        add(Layer("shift", shifts=shifts(c)))
        kind = rng.choice(["plain", "stride", "pool"]) if min(hh, ww) >= 4 else "plain"
        if kind == "stride":
            conv_or_dynamic(b + 1, width(), stride=2)
            hh, ww = -(-hh // 2), -(-ww // 2)
        else:
            conv_or_dynamic(b + 1, width())
        attend(b + 1)
        if kind == "pool":
            add(Layer("maxpool2"))
            hh, ww = hh // 2, ww // 2
    add(Layer("gap", m=1, sh=1))
    conv_or_dynamic(blocks + 1, classes, last=True)
    model = Model(name="random", input_shape=(h, w, in_channels), input_bits=8,
                  act_bits=act_bits, weight_bits=weight_bits,
                  classes=[str(k) for k in range(classes)], layers=layers)
    manifest, arrays = to_manifest_and_arrays(model)
    return validate(manifest, arrays)
