"""The op table: every op of the artifact format (DESIGN.md §1–2), defined once.

Each op is a class registered in :data:`OPS` by its manifest name. It declares its manifest
keys (:class:`Scalar` integers and :class:`Array` references, from which the JSON Schema's
per-op part is generated, see :mod:`models.schema`) and implements, for that op only:

- :meth:`Op.parse`: manifest entry + arrays -> :class:`~models.layer.Layer`, with every
  semantic check (dtypes, shapes, ranges, channel chaining, the exact int32 accumulator
  bound);
- :meth:`Op.out_shape`, :meth:`Op.out_bits`: what the next layer receives;
- :meth:`Op.to_manifest`: the inverse of ``parse`` (arrays named ``l{i}.{key}``);
- :meth:`Op.golden`: the NumPy golden model (kernels in :mod:`models.golden`);
- :meth:`Op.torch`: the independent PyTorch integer implementation (kernels in
  :mod:`models.int_eval`, imported only when called, so that nothing here imports torch);
- :meth:`Op.params`, :meth:`Op.macs`, :meth:`Op.detail`: the ``shiftacc info`` summary.

Adding an op means adding one class here (plus its two kernels) and regenerating the shipped
schema with ``python -m shiftacc.models.schema --write``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .layer import ArtifactError, Layer

__all__ = ["Scalar", "Array", "Context", "Op", "OPS", "OPS_OF_VERSION", "INT32_MIN", "INT32_MAX"]

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


@dataclass(frozen=True)
class Scalar:
    """A manifest key whose value is a JSON integer.

    Parameters
    ----------
    doc : str
        What the value means (goes into the schema's ``description``).
    minimum, maximum : int, optional
        Inclusive range.
    enum : tuple of int, optional
        The allowed values (instead of a range).
    required : bool
    """

    doc: str
    minimum: int | None = None
    maximum: int | None = None
    enum: tuple | None = None
    required: bool = True

    def schema(self):
        """The JSON Schema of the value."""
        s = {"type": "integer"}
        if self.enum is not None:
            s["enum"] = list(self.enum)
        if self.minimum is not None:
            s["minimum"] = self.minimum
        if self.maximum is not None:
            s["maximum"] = self.maximum
        s["description"] = self.doc
        return s

    def check(self, value, where, key):
        """Return ``value`` if it is a JSON integer within range, else raise ArtifactError."""
        if type(value) is not int:
            raise ArtifactError(f"{where}: {key!r} must be a JSON integer, got {_json(value)}")
        if self.enum is not None and value not in self.enum:
            raise ArtifactError(f"{where}: {key!r} is {value}, must be one of "
                                f"{', '.join(map(str, self.enum))}")
        if self.minimum is not None and value < self.minimum and self.maximum is None:
            raise ArtifactError(f"{where}: {key!r} = {value} must be at least {self.minimum}")
        if (self.minimum is not None and value < self.minimum
                or self.maximum is not None and value > self.maximum):
            raise ArtifactError(f"{where}: {key!r} = {value} is outside "
                                f"{_range(self.minimum, self.maximum)}")
        return value


@dataclass(frozen=True)
class Array:
    """A manifest key whose value names an integer array of the ``.npz``.

    Parameters
    ----------
    dtype : str
        NumPy dtype name the array must have exactly (``int8``, ``int32``, ``uint16``, ...).
    shape : str
        The shape in the format's words, e.g. ``"[cout, cin]"``.
    doc : str
        What the values mean and their range.
    required : bool
    """

    dtype: str
    shape: str
    doc: str
    required: bool = True

    def schema(self):
        """The JSON Schema of the value (a non-empty string naming the array)."""
        return {"$ref": "#/$defs/array_name",
                "description": f"name of an {self.dtype} {self.shape} array: {self.doc}"}


def _json(value):
    """``value`` as JSON spells it (``true``, ``1.0``, ``"x"``), for messages."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _range(lo, hi):
    return f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"


@dataclass
class Context:
    """What :meth:`Op.parse` needs to know about the layer's surroundings.

    Attributes
    ----------
    index : int
        The layer's position in ``layers``.
    op : str
    shape : tuple of int
        (H, W, C) the layer receives.
    bits : int
        Width of the unsigned values the layer receives (``input.bits`` before the first
        requant, ``act_bits`` after).
    act_bits, weight_bits : int
    last : bool
        The network's last layer (the classifier).
    arrays : dict of str to ndarray
        Every array of the file.
    """

    index: int
    op: str
    shape: tuple
    bits: int
    act_bits: int
    weight_bits: int
    last: bool
    arrays: dict

    @property
    def where(self):
        """``"layer i (op)"``, the prefix of every message about this layer."""
        return f"layer {self.index} ({self.op})"

    def fail(self, msg):
        """Raise :class:`ArtifactError` about this layer."""
        raise ArtifactError(f"{self.where}: {msg}")

    def require(self, cond, msg):
        """:meth:`fail` with ``msg`` unless ``cond``."""
        if not cond:
            self.fail(msg)

    def scalar(self, ml, key, spec):
        """The integer at ``ml[key]``, checked against ``spec`` (a :class:`Scalar`)."""
        if key not in ml:
            self.fail(f"missing key {key!r}")
        return spec.check(ml[key], self.where, key)

    def array(self, ml, key, spec, shape):
        """The array ``ml[key]`` names, checked for presence, exact dtype and shape.

        Returns
        -------
        (ndarray, str)
            The array and its name in the file.
        """
        if key not in ml:
            self.fail(f"missing key {key!r} (names an {spec.dtype} {spec.shape} array)")
        name = ml[key]
        self.require(isinstance(name, str), f"{key!r} must name an array in the file, "
                     f"got {_json(name)}")
        self.require(name in self.arrays, f"array {name!r} (key {key!r}) is not in the file")
        a = self.arrays[name]
        self.require(a.dtype == np.dtype(spec.dtype),
                     f"array {name!r} has dtype {a.dtype}, expected {spec.dtype}")
        self.require(tuple(a.shape) == tuple(shape),
                     f"array {name!r} has shape {list(a.shape)}, expected {list(shape)} "
                     f"{spec.shape}")
        return a, name


class Op:
    """One op of the format. Subclasses set the class attributes and override methods.

    Attributes
    ----------
    name : str
        The manifest's ``op`` value.
    version : int
        The format version that introduced the op.
    summary : str
        One sentence for the schema and ``shiftacc info``.
    keys : dict of str to Scalar or Array
        The op's manifest keys besides ``op``, in the order they are written.
    together : tuple of tuple of str
        Groups of optional keys that must appear all or none (``m`` with ``sh``).
    classifier : bool
        May be the network's last layer (raw int32 logits).
    """

    name = ""
    version = 1
    summary = ""
    keys: dict = {}
    together: tuple = ()
    classifier = False

    # -- manifest ---------------------------------------------------------------------------
    def schema(self):
        """This op's JSON Schema (an object with exactly its keys)."""
        props = {"op": {"const": self.name}}
        props.update({k: spec.schema() for k, spec in self.keys.items()})
        s = {"description": self.summary, "type": "object", "properties": props,
             "required": ["op"] + [k for k, spec in self.keys.items() if spec.required],
             "additionalProperties": False}
        if self.together:
            s["dependentRequired"] = {k: [o for o in group if o != k]
                                      for group in self.together for k in group}
        return s

    def parse(self, ml, ctx):
        """Build the :class:`Layer` of manifest entry ``ml``; raise ArtifactError if invalid.

        Parameters
        ----------
        ml : dict
            The layer's manifest entry (already checked against the JSON Schema).
        ctx : Context
        """
        raise NotImplementedError

    def to_manifest(self, layer, index, arrays):
        """The manifest entry of ``layer``; adds its arrays to ``arrays`` as ``l{index}.*``.

        Raises
        ------
        ArtifactError
            A required field is None, or an array holds values its dtype cannot represent.
        """
        where = f"layer {index} ({self.name})"
        ml = {"op": self.name}
        for key, spec in self.keys.items():
            value = getattr(layer, key)
            if value is None:
                if spec.required:
                    raise ArtifactError(f"{where}: {key!r} is required but the layer has none")
                continue
            if isinstance(spec, Array):
                a = np.asarray(value)
                dt = np.dtype(spec.dtype)
                if not np.issubdtype(a.dtype, np.integer) or (a.size and (
                        a.min() < np.iinfo(dt).min or a.max() > np.iinfo(dt).max)):
                    raise ArtifactError(f"{where}: {key!r} ({a.dtype}) does not fit "
                                        f"{spec.dtype}")
                arrays[f"l{index}.{key}"] = a.astype(dt)
                ml[key] = f"l{index}.{key}"
            else:
                ml[key] = int(value)
        return ml

    # -- shapes ---------------------------------------------------------------------------
    def out_shape(self, layer, shape):
        """(H, W, C) of the output for an input of ``shape``."""
        return tuple(shape)

    def out_bits(self, layer, bits, act_bits):
        """Width of the unsigned values the layer outputs when it receives ``bits`` bits."""
        return bits

    # -- arithmetic -----------------------------------------------------------------------
    def golden(self, layer, x, act_bits):
        """NumPy golden model of the layer on an integer NHWC batch; returns int64 NHWC."""
        raise NotImplementedError

    def torch(self, layer, x, act_bits):
        """PyTorch integer model on an int64 NCHW tensor; returns int64 NCHW."""
        raise NotImplementedError

    # -- description ----------------------------------------------------------------------
    def params(self, layer):
        """Number of stored parameters (array elements and scalar constants)."""
        return 0

    def macs(self, layer, out_shape):
        """Multiply-accumulates per image for an output of ``out_shape``."""
        return 0

    def detail(self, layer):
        """A short text for ``shiftacc info``."""
        return ""

    def shift_histogram(self, layer):
        """Counter of (dy, dx) over channels, or None for ops that do not shift."""
        return None


def _golden():
    from . import golden
    return golden


def _int_eval():
    from . import int_eval  # imports torch: only when a torch function is asked for
    return int_eval


class Replicate(Op):
    """``replicate``: E copies of the channels (DESIGN.md §1)."""

    name = "replicate"
    summary = "out[y, x, e*C + c] = in[y, x, c] for e < factor."
    keys = {"factor": Scalar("replication factor E", minimum=1, maximum=1024)}

    def parse(self, ml, ctx):
        return Layer("replicate", factor=ctx.scalar(ml, "factor", self.keys["factor"]))

    def out_shape(self, layer, shape):
        h, w, c = shape
        return h, w, c * layer.factor

    def golden(self, layer, x, act_bits):
        return _golden().replicate(x, layer.factor)

    def torch(self, layer, x, act_bits):
        return _int_eval().replicate_t(x, layer.factor)

    def detail(self, layer):
        return f"factor {layer.factor}"


class Shift(Op):
    """``shift``: per-channel spatial shift with zero padding (DESIGN.md §1)."""

    name = "shift"
    summary = ("out[y, x, c] = in[y + dy[c], x + dx[c], c] inside the image, else 0 "
               "(dy = +1 takes from the row below).")
    keys = {"shifts": Array("int8", "[C, 2]", "(dy, dx) per channel")}

    def parse(self, ml, ctx):
        shifts, name = ctx.array(ml, "shifts", self.keys["shifts"], (ctx.shape[2], 2))
        return Layer("shift", shifts=shifts, keys={"shifts": name})

    def golden(self, layer, x, act_bits):
        return _golden().shift(x, layer.shifts)

    def torch(self, layer, x, act_bits):
        return _int_eval().roll_shift(x, layer.shifts)

    def params(self, layer):
        return int(layer.shifts.size)

    def shift_histogram(self, layer):
        return Counter(map(tuple, layer.shifts.tolist()))

    def detail(self, layer):
        c = self.shift_histogram(layer)
        r = int(np.abs(layer.shifts).max()) if layer.shifts.size else 0
        return (f"{len(c)} distinct shifts, {c.get((0, 0), 0)}/{len(layer.shifts)} zero, "
                f"max |d| {r}")


#: The per-output-channel requant of a conv's output (absent on the classifier).
_OUTPUT_REQUANT_KEYS = {
    "m": Array("uint16", "[cout]", "requant multiplier in [1, 65535]; absent on the last "
               "layer", required=False),
    "sh": Array("uint8", "[cout]", "requant right shift in [1, 47]; absent on the last "
                "layer", required=False),
}


def _output_requant(ml, ctx, k, cout, keys, who):
    """``(m, sh)`` of a conv's output requant, or ``(None, None)`` on the last layer (raw
    int32 logits); adds the arrays' names to ``keys``. ``who`` names the layers that need
    them in the message."""
    if ctx.last:
        ctx.require("m" not in ml and "sh" not in ml,
                    "the last layer outputs raw int32 logits and takes no 'm'/'sh'")
        return None, None
    ctx.require("m" in ml and "sh" in ml, f"missing key 'm'/'sh': {who} ends in requant")
    m, keys["m"] = ctx.array(ml, "m", k["m"], (cout,))
    sh, keys["sh"] = ctx.array(ml, "sh", k["sh"], (cout,))
    ctx.require(m.min() >= 1, f"m must be in [1, 65535], found {m.min()}")
    ctx.require(sh.min() >= 1 and sh.max() <= 47,
                f"sh must be in [1, 47], found [{sh.min()}, {sh.max()}]")
    return m, sh


class _Conv(Op):
    """What a 1×1 convolution's output is, for ``conv1x1`` and ``dynamic_conv1x1``: stride s
    gives ``ceil(H / s)``; requant gives ``act_bits`` values, the classifier raw logits."""

    together = (("m", "sh"),)
    classifier = True

    def out_shape(self, layer, shape):
        h, w, _ = shape
        s = layer.stride
        return -(-h // s), -(-w // s), layer.cout

    def out_bits(self, layer, bits, act_bits):
        return act_bits if layer.requant else bits


class Conv1x1(_Conv):
    """``conv1x1``: 1×1 convolution, stride 1 or 2, then requant unless last (DESIGN.md §1)."""

    name = "conv1x1"
    summary = ("acc[y, x, o] = bias[o] + sum_i weight[o, i] * in[s*y, s*x, i], then requant "
               "with m/sh (absent on the last layer: raw int32 logits).")
    keys = {
        "stride": Scalar("subsampling s: H_out = ceil(H / s)", enum=(1, 2)),
        "cin": Scalar("input channels (the previous layer's output channels)", minimum=1),
        "cout": Scalar("output channels", minimum=1),
        "weight": Array("int8", "[cout, cin]", "signed, within weight_bits"),
        "bias": Array("int32", "[cout]", "added to the accumulator"),
        **_OUTPUT_REQUANT_KEYS,
    }

    def parse(self, ml, ctx):
        k = self.keys
        h, w, c = ctx.shape
        stride = ctx.scalar(ml, "stride", k["stride"])
        cin = ctx.scalar(ml, "cin", k["cin"])
        cout = ctx.scalar(ml, "cout", k["cout"])
        ctx.require(cin == c, f"cin = {cin} but the previous layer outputs {c} channels")
        weight, kw = ctx.array(ml, "weight", k["weight"], (cout, cin))
        wlo, whi = -(1 << (ctx.weight_bits - 1)), (1 << (ctx.weight_bits - 1)) - 1
        ctx.require(weight.min() >= wlo and weight.max() <= whi,
                    f"weights span [{weight.min()}, {weight.max()}], outside the "
                    f"{ctx.weight_bits}-bit range [{wlo}, {whi}]")
        bias, kb = ctx.array(ml, "bias", k["bias"], (cout,))
        keys = {"weight": kw, "bias": kb}
        m, sh = _output_requant(ml, ctx, k, cout, keys, "every conv1x1 but the last")
        # The accumulator must fit int32 for every input (DESIGN.md §1): bound it exactly,
        # with every input at 0 or at its largest value 2**bits - 1.
        xmax = (1 << ctx.bits) - 1
        w64 = weight.astype(np.int64)
        hi_acc = bias.astype(np.int64) + np.clip(w64, 0, None).sum(1) * xmax
        lo_acc = bias.astype(np.int64) + np.clip(w64, None, 0).sum(1) * xmax
        ctx.require(hi_acc.max() <= INT32_MAX and lo_acc.min() >= INT32_MIN,
                    f"accumulator can reach [{lo_acc.min()}, {hi_acc.max()}], which does not "
                    f"fit int32")
        return Layer("conv1x1", stride=stride, weight=weight, bias=bias, m=m, sh=sh, keys=keys)

    def golden(self, layer, x, act_bits):
        return _golden().conv1x1(x, layer.weight, layer.bias, layer.stride, layer.m, layer.sh,
                                 act_bits)

    def torch(self, layer, x, act_bits):
        return _int_eval().conv1x1_t(x, layer.weight, layer.bias, layer.stride, layer.m,
                                     layer.sh, act_bits)

    def params(self, layer):
        return int(layer.weight.size + layer.bias.size + (2 * layer.cout if layer.requant
                                                           else 0))

    def macs(self, layer, out_shape):
        return out_shape[0] * out_shape[1] * layer.cin * layer.cout

    def detail(self, layer):
        return f"{layer.cin}->{layer.cout} stride {layer.stride}" + (
            "" if layer.requant else ", raw int32 logits")


class MaxPool2(Op):
    """``maxpool2``: 2×2 max pooling, floor of odd sizes (DESIGN.md §1)."""

    name = "maxpool2"
    summary = "out[y, x, c] = max(in[2y..2y+1, 2x..2x+1, c]); H_out = floor(H / 2)."

    def parse(self, ml, ctx):
        h, w, _ = ctx.shape
        ctx.require(h >= 2 and w >= 2, f"needs an input of at least 2x2, got {h}x{w}")
        return Layer("maxpool2")

    def out_shape(self, layer, shape):
        h, w, c = shape
        return h // 2, w // 2, c

    def golden(self, layer, x, act_bits):
        return _golden().maxpool2(x)

    def torch(self, layer, x, act_bits):
        return _int_eval().maxpool2_t(x)


class Gap(Op):
    """``gap``: global sum pooling then one requant (DESIGN.md §1)."""

    name = "gap"
    summary = ("s[c] = sum over y, x of in[y, x, c], then requant with one (m, sh); output "
               "1x1xC.")
    keys = {"m": Scalar("requant multiplier", minimum=1, maximum=65535),
            "sh": Scalar("requant right shift", minimum=1, maximum=47)}

    def parse(self, ml, ctx):
        h, w, _ = ctx.shape
        m = ctx.scalar(ml, "m", self.keys["m"])
        sh = ctx.scalar(ml, "sh", self.keys["sh"])
        ctx.require(((1 << ctx.bits) - 1) * h * w <= INT32_MAX,
                    f"the pooled sum of a {h}x{w} map does not fit int32")
        return Layer("gap", m=m, sh=sh)

    def out_shape(self, layer, shape):
        return 1, 1, shape[2]

    def out_bits(self, layer, bits, act_bits):
        return act_bits

    def golden(self, layer, x, act_bits):
        return _golden().gap(x, layer.m, layer.sh, act_bits)

    def torch(self, layer, x, act_bits):
        return _int_eval().gap_t(x, layer.m, layer.sh, act_bits)

    def params(self, layer):
        return 2

    def detail(self, layer):
        return f"m {layer.m} sh {layer.sh}"


# --- version 2: attention at inference ----------------------------------------------------

_M = dict(minimum=1, maximum=65535)
_SH = dict(minimum=1, maximum=47)
_I32 = dict(minimum=INT32_MIN, maximum=INT32_MAX)

#: Keys shared by ``channel_attention`` and ``spatial_attention``: the gap rule's requant,
#: the logit's requant into the table's index, and the sigmoid table.
_POOL_KEYS = {"pool_m": Scalar("requant multiplier of the pooled channel sums", **_M),
              "pool_sh": Scalar("requant shift of the pooled channel sums", **_SH)}
_Z_KEYS = {"z_m": Scalar("requant multiplier of z into the table's index", **_M),
           "z_sh": Scalar("requant shift of z into the table's index", **_SH)}
_SIGMOID_LUT = Array("uint16", "[256]", "sigmoid table indexed by i + 128, entries in "
                     "[0, 256] (256 means x1)")


def _vector(ctx, ml, key, spec):
    """A 1-D array whose length the file decides (checked by the caller)."""
    if key not in ml:
        ctx.fail(f"missing key {key!r} (names an {spec.dtype} {spec.shape} array)")
    name = ml[key]
    ctx.require(isinstance(name, str) and name in ctx.arrays,
                f"{key!r} must name an array in the file, got {_json(name)}")
    a = ctx.arrays[name]
    ctx.require(a.ndim == 1, f"array {name!r} has shape {list(a.shape)}, expected "
                f"{spec.shape}")
    return ctx.array(ml, key, spec, a.shape)


def _within_weight_bits(ctx, name, a):
    lo, hi = -(1 << (ctx.weight_bits - 1)), (1 << (ctx.weight_bits - 1)) - 1
    ctx.require(a.size == 0 or (a.min() >= lo and a.max() <= hi),
                f"{name} spans [{a.min()}, {a.max()}], outside the {ctx.weight_bits}-bit range "
                f"[{lo}, {hi}]")


def _sigmoid_table(ctx, lut):
    ctx.require(lut.min() >= 0 and lut.max() <= 256,
                f"lut entries must be in [0, 256] (256 means x1), found [{lut.min()}, "
                f"{lut.max()}]")


def _fits_int32(ctx, what, lo, hi):
    ctx.require(lo >= INT32_MIN and hi <= INT32_MAX,
                f"{what} can reach [{lo}, {hi}], which does not fit int32")


def _pool_bound(ctx, step=1):
    h, w, _ = ctx.shape
    n = -(-h // step) * -(-w // step)
    _fits_int32(ctx, "the pooled sum", 0, ((1 << ctx.bits) - 1) * n)


def _matvec_bound(ctx, what, weight, bias, xmax):
    """Exact range of ``bias[r] + sum_c weight[r, c] * x[c]`` for x in [0, xmax]."""
    w64 = weight.astype(np.int64)
    b64 = bias.astype(np.int64)
    hi = b64 + np.clip(w64, 0, None).sum(1) * xmax
    lo = b64 + np.clip(w64, None, 0).sum(1) * xmax
    if hi.size:
        _fits_int32(ctx, what, int(lo.min()), int(hi.max()))


class ChannelAttention(Op):
    """``channel_attention`` (ECA): pooled channels, a 1-D convolution across them, the
    sigmoid table, channel-wise scaling (DESIGN.md §1, version 2)."""

    name = "channel_attention"
    version = 2
    summary = ("ECA: p = gap rule (pool_m, pool_sh); z[c] = bias + sum_j kernel[j] * "
               "p[c + j - (k-1)/2]; a = lut[clamp(rq(z, z_m, z_sh), -128, 127) + 128]; "
               "out = (x * a[c] + 128) >> 8.")
    keys = {
        **_POOL_KEYS,
        "bias": Scalar("added to every z[c]", **_I32),
        **_Z_KEYS,
        "kernel": Array("int8", "[k]", "the 1-D convolution across channels, k odd in "
                        "[1, 9], within weight_bits"),
        "lut": _SIGMOID_LUT,
    }

    def parse(self, ml, ctx):
        k = self.keys
        f = {key: ctx.scalar(ml, key, k[key])
             for key in ("pool_m", "pool_sh", "bias", "z_m", "z_sh")}
        kernel, kk = _vector(ctx, ml, "kernel", k["kernel"])
        n = len(kernel)
        ctx.require(n % 2 == 1 and 1 <= n <= 9, f"the kernel has {n} taps; it must have an "
                    f"odd number in [1, 9]")
        _within_weight_bits(ctx, "kernel taps", kernel)
        lut, kl = ctx.array(ml, "lut", k["lut"], (256,))
        _sigmoid_table(ctx, lut)
        _pool_bound(ctx)
        xmax = (1 << ctx.act_bits) - 1
        _matvec_bound(ctx, "z", kernel[None, :], np.array([f["bias"]]), xmax)
        return Layer("channel_attention", kernel=kernel, lut=lut,
                     keys={"kernel": kk, "lut": kl}, **f)

    def golden(self, layer, x, act_bits):
        return _golden().channel_attention(x, layer, act_bits)

    def torch(self, layer, x, act_bits):
        return _int_eval().channel_attention_t(x, layer, act_bits)

    def params(self, layer):
        return int(layer.kernel.size + layer.lut.size + 5)

    def macs(self, layer, out_shape):
        h, w, c = out_shape
        return c * len(layer.kernel) + h * w * c  # the 1-D conv, then one product per value

    def detail(self, layer):
        return f"k {len(layer.kernel)}"


class DynamicConv1x1(_Conv):
    """``dynamic_conv1x1``: K 1×1 kernels mixed per image by an integer softmax of the
    (interval-sampled) pooled input, then a conv1x1 (DESIGN.md §1, version 2)."""

    name = "dynamic_conv1x1"
    version = 2
    summary = ("p = gap rule over pixels with y % att_step == 0 and x % att_step == 0; "
               "r = att_bias + att_weight p; e = exp_lut[clamp(rq(r - max r, att_m, att_sh), "
               "-255, 0) + 255]; pi = e * 256 // sum e; W = (sum_k pi[k] weight[k] + 128) >> 8 "
               "(B alike); then conv1x1 with W, B, stride and m/sh (absent on the last layer).")
    keys = {
        "stride": Scalar("subsampling s: H_out = ceil(H / s)", enum=(1, 2)),
        "cin": Scalar("input channels (the previous layer's output channels)", minimum=1),
        "cout": Scalar("output channels", minimum=1),
        "kernels": Scalar("kernels K mixed by the attention", minimum=2),
        "att_step": Scalar("sampling interval t of the attention's pool", minimum=1),
        "att_pool_m": Scalar("requant multiplier of the attention's pooled sums", **_M),
        "att_pool_sh": Scalar("requant shift of the attention's pooled sums", **_SH),
        "att_m": Scalar("requant multiplier of the max-subtracted logits", **_M),
        "att_sh": Scalar("requant shift of the max-subtracted logits", **_SH),
        "weight": Array("int8", "[kernels, cout, cin]", "signed, within weight_bits"),
        "bias": Array("int32", "[kernels, cout]", "per kernel"),
        "att_weight": Array("int8", "[kernels, cin]", "attention logits' weights, within "
                            "weight_bits"),
        "att_bias": Array("int32", "[kernels]", "attention logits' bias"),
        "exp_lut": Array("uint16", "[256]", "exponential table indexed by j + 255, j in "
                         "[-255, 0]; entry 255 at least 1"),
        **_OUTPUT_REQUANT_KEYS,
    }

    def parse(self, ml, ctx):
        k = self.keys
        h, w, c = ctx.shape
        f = {key: ctx.scalar(ml, key, k[key])
             for key in ("stride", "att_step", "att_pool_m", "att_pool_sh", "att_m", "att_sh")}
        cin = ctx.scalar(ml, "cin", k["cin"])
        cout = ctx.scalar(ml, "cout", k["cout"])
        kn = ctx.scalar(ml, "kernels", k["kernels"])
        ctx.require(cin == c, f"cin = {cin} but the previous layer outputs {c} channels")
        weight, kw = ctx.array(ml, "weight", k["weight"], (kn, cout, cin))
        _within_weight_bits(ctx, "weights", weight)
        bias, kb = ctx.array(ml, "bias", k["bias"], (kn, cout))
        att_weight, kaw = ctx.array(ml, "att_weight", k["att_weight"], (kn, cin))
        _within_weight_bits(ctx, "att_weight", att_weight)
        att_bias, kab = ctx.array(ml, "att_bias", k["att_bias"], (kn,))
        exp_lut, kel = ctx.array(ml, "exp_lut", k["exp_lut"], (256,))
        ctx.require(exp_lut[255] >= 1, "exp_lut[255] (the largest logit's entry) must be at "
                    "least 1, so that the softmax's sum is never 0")
        keys = {"weight": kw, "bias": kb, "att_weight": kaw, "att_bias": kab, "exp_lut": kel}
        m, sh = _output_requant(ml, ctx, k, cout, keys,
                                "a dynamic_conv1x1 that is not the last layer")
        _pool_bound(ctx, f["att_step"])
        _matvec_bound(ctx, "the attention logits", att_weight, att_bias, (1 << ctx.act_bits) - 1)
        # The mixture is a convex combination with weights pi/256 (sum pi <= 256), rounded
        # down: each mixed W[o, i] and B[o] lies within the range of its K sources, so the
        # conv accumulator is bounded by the per-position extremes.
        _matvec_bound(ctx, "the accumulator (upper)", weight.max(0), bias.max(0),
                      (1 << ctx.bits) - 1)
        _matvec_bound(ctx, "the accumulator (lower)", weight.min(0), bias.min(0),
                      (1 << ctx.bits) - 1)
        return Layer("dynamic_conv1x1", weight=weight, bias=bias, att_weight=att_weight,
                     att_bias=att_bias, exp_lut=exp_lut, m=m, sh=sh, keys=keys, **f)

    def golden(self, layer, x, act_bits):
        return _golden().dynamic_conv1x1(x, layer, act_bits)

    def torch(self, layer, x, act_bits):
        return _int_eval().dynamic_conv1x1_t(x, layer, act_bits)

    def params(self, layer):
        return int(layer.weight.size + layer.bias.size + layer.att_weight.size
                   + layer.att_bias.size + layer.exp_lut.size + 4
                   + (2 * layer.cout if layer.requant else 0))

    def macs(self, layer, out_shape):
        kn, cout, cin = layer.weight.shape
        # attention logits + mixing the kernels and biases + the convolution itself
        return kn * cin + kn * cout * (cin + 1) + out_shape[0] * out_shape[1] * cin * cout

    def detail(self, layer):
        return (f"{layer.cin}->{layer.cout} stride {layer.stride}, K {layer.kernels}, "
                f"t {layer.att_step}" + ("" if layer.requant else ", raw int32 logits"))


class SpatialAttention(Op):
    """``spatial_attention`` (NL-SAM): every pixel's dot product with a projected global
    context, through the sigmoid table, scales all its channels (docs/format.md, version 2)."""

    name = "spatial_attention"
    version = 2
    summary = ("p = gap rule (pool_m, pool_sh); u = clamp(rq(ctx_bias + ctx_weight p, ctx_m, "
               "ctx_sh), -128, 127); z[y, x] = bias + sum_c u[c] x[y, x, c]; s = "
               "lut[clamp(rq(z, z_m, z_sh), -128, 127) + 128]; out = (x * s[y, x] + 128) >> 8.")
    keys = {
        **_POOL_KEYS,
        "ctx_m": Scalar("requant multiplier of the projected context", **_M),
        "ctx_sh": Scalar("requant shift of the projected context", **_SH),
        "bias": Scalar("added to every z[y, x]", **_I32),
        **_Z_KEYS,
        "ctx_weight": Array("int8", "[C, C]", "projection of the pooled context, within "
                            "weight_bits"),
        "ctx_bias": Array("int32", "[C]", "bias of the projection"),
        "lut": _SIGMOID_LUT,
    }

    def parse(self, ml, ctx):
        k = self.keys
        c = ctx.shape[2]
        f = {key: ctx.scalar(ml, key, k[key])
             for key in ("pool_m", "pool_sh", "ctx_m", "ctx_sh", "bias", "z_m", "z_sh")}
        cw, kcw = ctx.array(ml, "ctx_weight", k["ctx_weight"], (c, c))
        _within_weight_bits(ctx, "ctx_weight", cw)
        cb, kcb = ctx.array(ml, "ctx_bias", k["ctx_bias"], (c,))
        lut, kl = ctx.array(ml, "lut", k["lut"], (256,))
        _sigmoid_table(ctx, lut)
        _pool_bound(ctx)
        _matvec_bound(ctx, "the projected context", cw, cb, (1 << ctx.act_bits) - 1)
        xmax = (1 << ctx.bits) - 1
        _fits_int32(ctx, "z", f["bias"] - 128 * c * xmax, f["bias"] + 127 * c * xmax)
        return Layer("spatial_attention", ctx_weight=cw, ctx_bias=cb, lut=lut,
                     keys={"ctx_weight": kcw, "ctx_bias": kcb, "lut": kl}, **f)

    def golden(self, layer, x, act_bits):
        return _golden().spatial_attention(x, layer, act_bits)

    def torch(self, layer, x, act_bits):
        return _int_eval().spatial_attention_t(x, layer, act_bits)

    def params(self, layer):
        return int(layer.ctx_weight.size + layer.ctx_bias.size + layer.lut.size + 7)

    def macs(self, layer, out_shape):
        h, w, c = out_shape
        return c * c + 2 * h * w * c  # the projection, the dot products, the scaling

    def detail(self, layer):
        return f"context {len(layer.ctx_bias)}x{len(layer.ctx_bias)}"


#: Every op by manifest name, in the order the format document lists them.
OPS = {op.name: op for op in (Replicate(), Shift(), Conv1x1(), MaxPool2(), Gap(),
                              ChannelAttention(), DynamicConv1x1(), SpatialAttention())}

#: The names of the ops each format version knows.
OPS_OF_VERSION = {1: tuple(n for n, op in OPS.items() if op.version == 1),
                  2: tuple(OPS)}


def get(name, where="layer"):
    """The :class:`Op` called ``name``; ArtifactError naming the known ops otherwise."""
    try:
        return OPS[name]
    except (KeyError, TypeError):
        raise ArtifactError(f"{where}: unknown op {name!r} (known: {', '.join(OPS)})") from None
