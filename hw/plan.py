"""Dataflow plan: which block serves each layer, with how many lanes, and how fast.

The generator turns an artifact's layer list into a chain of *stages* (one engine per layer,
plus lane-width converters where neighbouring lane counts differ) and chooses every stage's
parallelism so that the pipeline is balanced: each stage's steady-state cycles per image stay
under a common target ``T``, and the smallest ``T`` whose multipliers fit the budget wins.

Resources and cycles are not modelled here: every stage asks its block's ``cost``
classmethod (:func:`stage_block` maps a stage to the block and the constructor arguments the
RTL is built with), so the multipliers counted against ``max_multipliers`` (MAC lanes,
Requant lanes, the pooling scale: all of them), the memories and the analytical cycle model
(:attr:`Stage.cycles`) are the blocks' own statements. A pipeline's steady-state cycles per
image is its slowest stage's. Beside it, DESIGN.md §3's physical limit:
``ideal = MACs per image / multipliers instantiated``, and the MAC efficiency.

The config (``--config PAR.json``) is a typed, validated :class:`PlanConfig`; a plan that the
parameter port cannot address (layer index, memory row or lane past its field) is refused
here, by layer, before any Verilog is written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .channel_map import replicate_map
from .resources import FAMILY_CELL, Cost, MemorySpec, fifo_memories

__all__ = ["PlanError", "PlanConfig", "Stage", "Plan", "plan_network", "load_config", "as_config",
           "DEFAULT_CONFIG", "stage_block", "PORT_LIMITS"]

#: Defaults of the parallelism config (``--config PAR.json`` overrides any key).
DEFAULT_CONFIG = {
    # Multipliers the whole design may instantiate: every hardware multiplier counts (the
    # MacArrays' P_in * P_out, their Requant lanes, the pooling Requant), DESIGN.md §3.
    "max_multipliers": 160,
    # Shift neighbourhood radius R the ShiftUnits are built for (|dy|, |dx| <= R).
    "radius": 1,
    # Per-layer overrides, keyed by layer index (as a string in JSON):
    # {"2": {"p_in": 9, "p_out": 8}} for a conv1x1, {"1": {"lanes": 3}} for other ops.
    "layers": {},
    # Largest FIFO between two stages, in beats (each FIFO holds about one output row).
    "max_fifo_depth": 1024,
    # The fastest pipeline that fits may leave multipliers idle (a layer that needs 2.1
    # multipliers' worth of work gets 3). Accept up to `max_slowdown` times its cycles/image
    # to reach this MAC efficiency; 0 means always the fastest plan.
    "min_mac_efficiency": 0.95,
    "max_slowdown": 1.25,
}

#: Radii the ShiftUnit ring (``ring_rows``) is sized for.
RADII = (1, 2, 3)


class PlanError(ValueError):
    """The artifact's topology (or the config) cannot be built; the message names the layer
    or the config key."""


def _kind(value):
    """How a JSON value reads in an error message."""
    if isinstance(value, bool):
        return f"{json.dumps(value)} (a boolean)"
    if isinstance(value, str):
        return f"{json.dumps(value)} (a string)"
    if isinstance(value, float):
        return f"{value!r} (not an integer)"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return f"a JSON {'array' if isinstance(value, list) else 'object'}"
    return repr(value)


def _int_at_least(where, key, value, lo):
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        what = "a positive integer" if lo == 1 else f"an integer >= {lo}"
        raise PlanError(f"{where}: {json.dumps(key)} must be {what}, got {_kind(value)}")
    return value


def _number_in(where, key, value, lo, hi=None):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= lo and (
        hi is None or value <= hi)
    if not ok or value != value:                 # NaN
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise PlanError(f"{where}: {json.dumps(key)} must be a number {rng}, got "
                        f"{_kind(value)}")
    return value


@dataclass(frozen=True)
class PlanConfig:
    """The planner's typed, validated configuration (``--config PAR.json``).

    Every field is checked when the object is built (:meth:`from_dict`): a wrong type
    (``"8"``, ``true``, ``1.5`` for an integer), an unknown key, a malformed layer override
    raise :class:`PlanError` naming the key. Checks that need the model (a layer index past
    the network, an override that does not match the layer's op, lanes beyond its channels)
    happen in :func:`plan_network`.

    Attributes
    ----------
    max_multipliers : int
        Every hardware multiplier of the design counts (MAC lanes, Requant, pooling scale).
    radius : int
        Shift radius R the ShiftUnits are built for (1, 2 or 3).
    layers : dict
        ``{layer index (int): {"p_in": int, "p_out": int}}`` for a conv1x1 or
        ``{layer index: {"lanes": int}}`` for another op.
    max_fifo_depth : int
        Largest inter-stage FIFO in beats (>= 4).
    min_mac_efficiency : float
        In [0, 1]; see :data:`DEFAULT_CONFIG`.
    max_slowdown : float
        >= 1.
    """

    max_multipliers: int = DEFAULT_CONFIG["max_multipliers"]
    radius: int = DEFAULT_CONFIG["radius"]
    layers: dict = field(default_factory=dict)
    max_fifo_depth: int = DEFAULT_CONFIG["max_fifo_depth"]
    min_mac_efficiency: float = DEFAULT_CONFIG["min_mac_efficiency"]
    max_slowdown: float = DEFAULT_CONFIG["max_slowdown"]

    def __post_init__(self):
        where = "config"
        _int_at_least(where, "max_multipliers", self.max_multipliers, 1)
        _int_at_least(where, "radius", self.radius, 1)
        if self.radius not in RADII:
            raise PlanError(f"config: \"radius\" must be one of {', '.join(map(str, RADII))}, "
                            f"got {self.radius}")
        _int_at_least(where, "max_fifo_depth", self.max_fifo_depth, 4)
        _number_in(where, "min_mac_efficiency", self.min_mac_efficiency, 0, 1)
        _number_in(where, "max_slowdown", self.max_slowdown, 1)
        object.__setattr__(self, "layers", _check_layers(self.layers))

    @classmethod
    def from_dict(cls, data, source="config"):
        """Build from a JSON-like mapping (unknown keys are an error).

        Parameters
        ----------
        data : Mapping
        source : str
            Named in error messages (e.g. the file path).

        Raises
        ------
        PlanError
        """
        if isinstance(data, PlanConfig):
            return data
        if not isinstance(data, Mapping):
            raise PlanError(f"{source}: must be a JSON object, got {_kind(data)}")
        for k in data:
            if k not in DEFAULT_CONFIG:
                raise PlanError(f"{source}: unknown key {k!r} (known: "
                                f"{', '.join(DEFAULT_CONFIG)})")
        try:
            return cls(**data)
        except PlanError as e:
            msg = str(e)
            if source != "config" and msg.startswith("config"):
                msg = f"{source}{msg[len('config'):]}"
            raise PlanError(msg) from None

    def to_dict(self):
        """The JSON form (layer indices as strings), accepted back by :meth:`from_dict`."""
        out = {k: getattr(self, k) for k in DEFAULT_CONFIG}
        out["layers"] = {str(i): dict(v) for i, v in sorted(self.layers.items())}
        return out

    def __getitem__(self, key):
        """Dict-style read access (``cfg["radius"]``), the JSON form's values."""
        if key not in DEFAULT_CONFIG:
            raise KeyError(key)
        return self.to_dict()[key]


def _check_layers(layers):
    """Validate the ``layers`` overrides; return them keyed by int layer index."""
    if not isinstance(layers, Mapping):
        raise PlanError(f"config: \"layers\" must be a JSON object keyed by layer index, got "
                        f"{_kind(layers)}")
    out = {}
    for key, ov in layers.items():
        if isinstance(key, bool) or not (
                (isinstance(key, int) and key >= 0)
                or (isinstance(key, str) and key.isdigit() and key.isascii())):
            shown = json.dumps(key) if isinstance(key, str) else repr(key)
            raise PlanError(f"config: \"layers\" key {shown} is not a layer index (a "
                            f"non-negative integer, e.g. \"2\")")
        idx = int(key)
        where = f"config: layers[\"{idx}\"]"
        if idx in out:
            raise PlanError(f"{where}: given twice")
        if not isinstance(ov, Mapping):
            raise PlanError(f"{where} must be an object such as {{\"p_in\": 2, \"p_out\": 4}} "
                            f"or {{\"lanes\": 2}}, got {_kind(ov)}")
        for k in ov:
            if k not in ("p_in", "p_out", "lanes"):
                raise PlanError(f"{where}: unknown key {k!r} (known: p_in, p_out, lanes)")
        for k, v in ov.items():
            _int_at_least(where, k, v, 1)
        if ("p_in" in ov) != ("p_out" in ov):
            given, missing = ("p_in", "p_out") if "p_in" in ov else ("p_out", "p_in")
            raise PlanError(f"{where}: {json.dumps(given)} given without {json.dumps(missing)}; "
                            f"a conv1x1 override sets both")
        if "lanes" in ov and "p_in" in ov:
            raise PlanError(f"{where}: give either \"lanes\" (other ops) or \"p_in\"/\"p_out\" "
                            f"(conv1x1), not both")
        if not ov:
            raise PlanError(f"{where}: empty override")
        out[idx] = dict(ov)
    return out


def load_config(path=None, overrides=None):
    """Read a parallelism config (JSON) over :data:`DEFAULT_CONFIG` and validate it.

    Parameters
    ----------
    path : str or Path, optional
        A JSON object with any keys of :data:`DEFAULT_CONFIG`.
    overrides : dict, optional
        Keys set on top of the file (same validation).

    Returns
    -------
    dict
        The validated config in its JSON form (:meth:`PlanConfig.to_dict`): plain JSON
        types, so it can be written into a job file; :func:`plan_network` takes it (or a
        :class:`PlanConfig`).

    Raises
    ------
    PlanError
        Unreadable file, unknown key or bad value, naming the key.
    """
    data = {}
    source = "config"
    if path is not None:
        source = f"config {path}"
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PlanError(f"{source}: cannot read it as JSON ({e})") from None
        if not isinstance(data, dict):
            raise PlanError(f"{source}: must be a JSON object, got {_kind(data)}")
        data = dict(data)
    if overrides:
        data.update(overrides)
    return PlanConfig.from_dict(data, source).to_dict()


def as_config(cfg):
    """:class:`PlanConfig` from None (defaults), a dict (e.g. :func:`load_config`'s JSON form,
    read back from a job file) or a PlanConfig."""
    if cfg is None:
        return PlanConfig()
    return PlanConfig.from_dict(cfg)


def _cdiv(a, b):
    return -(-a // b)


#: Field limits of the parameter port's beat (``hw/params.py``): layer u8, row u16, lane u16.
PORT_LIMITS = {"layer": 1 << 8, "row": 1 << 16, "lane": 1 << 16}

#: Families :meth:`Plan.dsp` reports (see :mod:`hw.resources`).
FAMILIES = ("ecp5", "ice40")


@dataclass
class Stage:
    """One hardware engine of the dataflow pipeline.

    Attributes
    ----------
    kind : str
        ``channel_map`` (replicate or lane converter), ``shift``, ``subsample``, ``conv``,
        ``maxpool``, ``gap``; version 2: ``channel_attention``, ``spatial_attention``,
        ``dynamic_conv``.
    layer : int or None
        The artifact layer this stage computes (None for a pure lane converter).
    in_shape, out_shape : tuple of int
        (H, W, C) consumed and produced per image.
    lanes_in, lanes_out : int
        Lanes of the input and output pixel streams.
    bits_in, bits_out : int
        Width of one value on the input and output streams.
    signed : bool
        Values are signed (the classifier's int32 logits).
    stride : int
        ShiftUnit output subsampling (2 when fused with a following stride-2 conv).
    source : list of int or None
        ``channel_map``: output channel k takes input channel ``source[k]``.
    requant : bool
        ``conv``: ends in requant (False for the classifier).
    macs : int
        MACs per image done by this stage.
    fifo_depth : int
        Depth, in beats, of the FIFO after this stage (0: none).
    cost : hw.resources.Cost
        The block's own statement of its cycles, multipliers and memories (its ``cost``
        classmethod, see :func:`stage_block`); set by the planner.
    """

    kind: str
    layer: int | None
    in_shape: tuple
    out_shape: tuple
    lanes_in: int
    lanes_out: int
    bits_in: int
    bits_out: int
    signed: bool = False
    stride: int = 1
    source: list | None = None
    requant: bool = True
    macs: int = 0
    fifo_depth: int = 0
    cost: Cost | None = None

    @property
    def name(self):
        """Short unique-enough label, e.g. ``L2.conv`` or ``cvt``."""
        return f"L{self.layer}.{self.kind}" if self.layer is not None else "cvt"

    @property
    def cycles(self):
        """Steady-state cycles per image of this stage (the block's analytical model)."""
        return self.cost.cycles

    @property
    def multipliers(self):
        """Hardware multipliers the block instantiates (all of them, Requant included)."""
        return self.cost.multiplier_count

    def fifo_memories(self):
        """Storage of the FIFO after this stage, as ``top.py`` builds it."""
        if not self.fifo_depth:
            return []
        return fifo_memories("fifo", self.lanes_out * self.bits_out + 1, self.fifo_depth)

    def memories(self, label=None):
        """Every memory of this stage (block RAMs and its output FIFO), named ``label.*``."""
        label = self.name if label is None else label
        return [MemorySpec(f"{label}.{mem.name}", mem.depth, mem.width)
                for mem in self.cost.memories + self.fifo_memories()]

    def dsp(self, family):
        return self.cost.dsp(family)

    def to_dict(self):
        return {
            "name": self.name, "kind": self.kind, "layer": self.layer,
            "in_shape": list(self.in_shape), "out_shape": list(self.out_shape),
            "lanes_in": self.lanes_in, "lanes_out": self.lanes_out,
            "bits_in": self.bits_in, "bits_out": self.bits_out, "signed": self.signed,
            "stride": self.stride, "source": self.source, "requant": self.requant,
            "cycles": self.cycles, "multipliers": self.multipliers, "macs": self.macs,
            "fifo_depth": self.fifo_depth,
            "multiplier_list": [{"name": x.name, "count": x.count, "a_bits": x.a_bits,
                                 "a_signed": x.a_signed, "b_bits": x.b_bits,
                                 "b_signed": x.b_signed,
                                 **{f: x.dsp(f) for f in FAMILIES}}
                                for x in self.cost.multipliers],
            "dsp": {f: self.dsp(f) for f in FAMILIES},
        }


@dataclass
class Plan:
    """The whole pipeline and its figures; every total is derived from the stages.

    Attributes
    ----------
    stages : list of Stage
    input_lanes : int
        Lanes of the image input stream.
    macs_per_image : int
    radius : int
    config : dict
        The config in its JSON form (:meth:`PlanConfig.to_dict`).
    predicted_cycles_per_image : int
        The slowest stage's cycles per image (steady state, images back to back).
    multipliers : int
        Every hardware multiplier instantiated (MAC lanes, Requant, pooling scale).
    ideal_cycles_per_image : float
        ``macs_per_image / multipliers`` (DESIGN.md §3).
    predicted_mac_efficiency : float
        ``macs / (multipliers * predicted_cycles_per_image)``.
    """

    stages: list
    input_lanes: int
    macs_per_image: int
    radius: int
    config: dict = field(default_factory=dict)

    @property
    def predicted_cycles_per_image(self):
        return max(s.cycles for s in self.stages)

    @property
    def multipliers(self):
        return sum(s.multipliers for s in self.stages)

    def dsp(self, family):
        """DSP blocks of the whole design on ``family`` (``ecp5``: MULT18X18D, ``ice40``:
        SB_MAC16), as Yosys maps the multipliers (see :func:`hw.resources.dsp_blocks`)."""
        return sum(s.dsp(family) for s in self.stages)

    def memories(self):
        """Every on-chip memory of the design (list of :class:`~hw.resources.MemorySpec`)."""
        return [mem for n, s in enumerate(self.stages) for mem in s.memories(_label(n, s))]

    @property
    def memory_bits(self):
        return sum(mem.bits for mem in self.memories())

    @property
    def ideal_cycles_per_image(self):
        return self.macs_per_image / max(1, self.multipliers)

    @property
    def predicted_mac_efficiency(self):
        return self.macs_per_image / max(1, self.multipliers * self.predicted_cycles_per_image)

    def layer_lanes(self):
        """(p_in, p_out) for each conv layer and lanes for every other layer, by layer index."""
        out = {}
        for s in self.stages:
            if s.layer is None:
                continue
            if s.kind in ("conv", "dynamic_conv"):
                out[s.layer] = {"p_in": s.lanes_in, "p_out": s.lanes_out}
            elif s.kind != "subsample":
                out[s.layer] = {"lanes": s.lanes_out}
        return out

    def to_dict(self):
        return {
            "input_lanes": self.input_lanes,
            "radius": self.radius,
            "multipliers": self.multipliers,
            "dsp": {f: self.dsp(f) for f in FAMILIES},
            "macs_per_image": self.macs_per_image,
            "predicted_cycles_per_image": self.predicted_cycles_per_image,
            "ideal_cycles_per_image": self.ideal_cycles_per_image,
            "predicted_mac_efficiency": self.predicted_mac_efficiency,
            "stages": [s.to_dict() for s in self.stages],
            "config": self.config,
        }

    def resource_line(self):
        """``N multipliers (M MULT18X18D on ECP5, K SB_MAC16 on iCE40)``."""
        return (f"{self.multipliers} multipliers ({self.dsp('ecp5')} {FAMILY_CELL['ecp5']} on "
                f"ECP5, {self.dsp('ice40')} {FAMILY_CELL['ice40']} on iCE40)")

    def summary_text(self, model=None):
        """A readable table of the pipeline."""
        lines = []
        if model is not None:
            lines.append(f"model {model.name}: input {'x'.join(map(str, model.input_shape))}, "
                         f"{len(model.layers)} layers, {self.macs_per_image} MACs/image")
        w = max([14] + [len(s.name) + 1 for s in self.stages])
        lines.append(f"{'stage':<{w}}{'in HxWxC':>12}{'out HxWxC':>12}{'lanes':>9}"
                     f"{'mults':>7}{'cycles/img':>12}{'fifo':>6}")
        for s in self.stages:
            lanes = f"{s.lanes_in}>{s.lanes_out}"
            lines.append(f"{s.name:<{w}}{'x'.join(map(str, s.in_shape)):>12}"
                         f"{'x'.join(map(str, s.out_shape)):>12}{lanes:>9}{s.multipliers:>7}"
                         f"{s.cycles:>12}{s.fifo_depth:>6}")
        lines.append(f"{self.resource_line()}; {self.memory_bits} memory bits; predicted "
                     f"{self.predicted_cycles_per_image} cycles/image; ideal "
                     f"{self.ideal_cycles_per_image:.1f}; predicted MAC efficiency "
                     f"{self.predicted_mac_efficiency:.3f}")
        return "\n".join(lines)


def _label(n, stage):
    """Memory-name prefix of stage ``n`` (converters are numbered: there may be several)."""
    return stage.name if stage.layer is not None else f"cvt{n}"


def stage_block(stage, model, radius):
    """The hardware block of a stage: (block class, constructor keyword arguments).

    The one mapping from plan to RTL: :class:`hw.top.Accelerator` instantiates
    ``cls(**kwargs)`` and the planner asks ``cls.cost(**kwargs)`` for the same block's
    resources (plus ``pixels`` for the per-pixel blocks).
    """
    h, w, c = stage.in_shape
    if stage.kind == "channel_map":
        from .channel_map import ChannelMap
        return ChannelMap, dict(cin=c, cout=stage.out_shape[2], lanes_in=stage.lanes_in,
                                lanes_out=stage.lanes_out, bits=stage.bits_in,
                                source=stage.source, is_signed=stage.signed)
    if stage.kind == "shift":
        from .shift_unit import ShiftUnit
        return ShiftUnit, dict(width=w, height=h, channels=c, lanes=stage.lanes_in,
                               bits=stage.bits_in, radius=radius, stride=stage.stride,
                               layer_id=stage.layer)
    if stage.kind == "subsample":
        from .subsample import Subsample2
        return Subsample2, dict(width=w, height=h, channels=c, lanes=stage.lanes_in,
                                bits=stage.bits_in)
    if stage.kind == "conv":
        from .mac_array import MacArray
        layer = model.layers[stage.layer]
        return MacArray, dict(cin=layer.cin, cout=layer.cout, p_in=stage.lanes_in,
                              p_out=stage.lanes_out, in_bits=stage.bits_in,
                              weight_bits=model.weight_bits, act_bits=model.act_bits,
                              requant=stage.requant, layer_id=stage.layer)
    if stage.kind == "maxpool":
        from .maxpool import MaxPool2
        return MaxPool2, dict(width=w, height=h, channels=c, lanes=stage.lanes_in,
                              bits=stage.bits_in)
    if stage.kind == "gap":
        from .gap import GlobalAvgPool
        return GlobalAvgPool, dict(width=w, height=h, channels=c, lanes=stage.lanes_in,
                                   in_bits=stage.bits_in, act_bits=model.act_bits,
                                   layer_id=stage.layer)
    if stage.kind == "channel_attention":
        from .channel_attention import ChannelAttention
        layer = model.layers[stage.layer]
        return ChannelAttention, dict(width=w, height=h, channels=c, lanes=stage.lanes_in,
                                      bits=stage.bits_in, act_bits=model.act_bits,
                                      k=len(layer.kernel), layer_id=stage.layer)
    if stage.kind == "spatial_attention":
        from .spatial_attention import SpatialAttention
        return SpatialAttention, dict(width=w, height=h, channels=c, lanes=stage.lanes_in,
                                      bits=stage.bits_in, act_bits=model.act_bits,
                                      layer_id=stage.layer)
    if stage.kind == "dynamic_conv":
        layer = model.layers[stage.layer]
        return _dynamic_block(h, w, layer, stage.lanes_in, stage.lanes_out, stage.bits_in,
                              model, stage.layer)
    raise ValueError(f"no block for stage kind {stage.kind!r}")


def _dynamic_block(h, w, layer, p_in, p_out, in_bits, model, layer_id):
    from .dynamic_conv import DynamicConv1x1
    return DynamicConv1x1, dict(width=w, height=h, cin=layer.cin, cout=layer.cout, p_in=p_in,
                                p_out=p_out, stride=layer.stride, kernels=layer.kernels,
                                att_step=layer.att_step, in_bits=in_bits,
                                weight_bits=model.weight_bits, act_bits=model.act_bits,
                                requant=layer.requant, layer_id=layer_id)


def _with_cost(stage, model, radius):
    """Set ``stage.cost`` from the block's own cost function; return the stage."""
    cls, kwargs = stage_block(stage, model, radius)
    extra = {}
    if stage.kind in ("conv", "channel_map"):
        extra["pixels"] = stage.in_shape[0] * stage.in_shape[1]
    stage.cost = cls.cost(**kwargs, **extra)
    return stage


def _stream_lanes(hw, c, t, prev_lanes):
    """Fewest lanes (preferring the producer's) carrying an hw-pixel, c-channel map in <= t cycles."""
    folds = t // hw
    if folds < 1:
        return None
    if prev_lanes is not None and prev_lanes <= c and _cdiv(c, prev_lanes) <= folds:
        return prev_lanes
    return min(c, _cdiv(c, min(folds, c)))


def _conv_multipliers(cin, p_in, p_out, requant):
    """Every multiplier of a MacArray: ``p_in * p_out`` MAC lanes plus its shared Requant lanes
    (``ceil(p_out / ceil(cin / p_in))``, see :meth:`hw.mac_array.MacArray.geometry`)."""
    return p_in * p_out + (_cdiv(p_out, _cdiv(cin, p_in)) if requant else 0)


def _conv_lanes(pixels, cin, cout, t, prev_lanes, requant):
    """(p_in, p_out) with the fewest multipliers (Requant included) doing the conv in <= t
    cycles per image."""
    folds = t // pixels
    if folds < 1:
        return None
    best = None
    for p_in in range(1, cin + 1):
        nbi = _cdiv(cin, p_in)
        if nbi > folds:
            continue
        nbo_max = folds // nbi
        p_out = _cdiv(cout, min(nbo_max, cout))
        cycles = pixels * nbi * _cdiv(cout, p_out)
        key = (_conv_multipliers(cin, p_in, p_out, requant), p_in != prev_lanes, cycles)
        if best is None or key < best[0]:
            best = (key, p_in, p_out)
    return None if best is None else (best[1], best[2])


def _layer_ops(model):
    """(layer index, layer, in shape, out shape, value bits in) for every layer."""
    shapes = model.shapes()
    bits = model.value_bits()
    return [(i, layer, shapes[i], shapes[i + 1], bits[i]) for i, layer in enumerate(model.layers)]


#: Ops whose hardware block takes parameters (and so answers to its layer index).
_PARAM_OPS = ("shift", "conv1x1", "gap", "channel_attention", "spatial_attention",
              "dynamic_conv1x1")

#: Ops configured with ``p_in``/``p_out`` (a MAC array); every other op takes ``lanes``.
_MAC_OPS = ("conv1x1", "dynamic_conv1x1")

#: Stage kind of each op that is one engine with one lane count in and out.
_LANE_STAGES = {"maxpool2": "maxpool", "gap": "gap", "channel_attention": "channel_attention",
                "spatial_attention": "spatial_attention"}


def check_buildable(model, cfg):
    """Refuse, up front and by layer, what the hardware cannot build or the config gets wrong.

    Raises
    ------
    PlanError
    """
    cfg = as_config(cfg)
    r = cfg.radius
    n = len(model.layers)
    for idx in cfg.layers:
        if idx >= n:
            raise PlanError(f"config: layers[\"{idx}\"]: the model has layers 0..{n - 1} only")
    for i, layer, (h, w, c), out, bits in _layer_ops(model):
        if layer.op in _PARAM_OPS and i >= PORT_LIMITS["layer"]:
            raise PlanError(f"layer {i} ({layer.op}): the parameter port's layer field is 8 "
                            f"bits, so a layer with parameters must have an index below "
                            f"{PORT_LIMITS['layer']}")
        if layer.op == "shift":
            worst = int(abs(layer.shifts.astype(int)).max()) if layer.shifts.size else 0
            if worst > r:
                raise PlanError(f"layer {i} (shift): shifts reach {worst} pixels but the "
                                f"ShiftUnit is built for radius {r}; set \"radius\": {worst} in "
                                f"the config")
        if layer.op == "replicate" and c * layer.factor > 4096:
            raise PlanError(f"layer {i} (replicate): {c * layer.factor} channels is more than "
                            f"the 4096 a pixel buffer is built for")
        ov = cfg.layers.get(i)
        if ov is None:
            continue
        if layer.op in _MAC_OPS:
            bad = set(ov) - {"p_in", "p_out"}
        else:
            bad = set(ov) - {"lanes"}
        if bad:
            takes = "p_in and p_out" if layer.op in _MAC_OPS else "lanes"
            raise PlanError(f"config: layer {i} ({layer.op}) does not take "
                            f"{', '.join(sorted(bad))} (it takes {takes})")
        if layer.op in _MAC_OPS:
            if not (ov["p_in"] <= layer.cin and ov["p_out"] <= layer.cout):
                raise PlanError(f"config: layer {i} ({layer.op}): p_in must be in [1, "
                                f"{layer.cin}] and p_out in [1, {layer.cout}], got p_in "
                                f"{ov['p_in']}, p_out {ov['p_out']}")
        else:
            cmax = out[2] if layer.op == "replicate" else c
            if ov["lanes"] > cmax:
                raise PlanError(f"config: layer {i} ({layer.op}): lanes must be in [1, {cmax}], "
                                f"got {ov['lanes']}")


def port_overflow(stage, model):
    """Why the parameter port cannot address ``stage``'s memories (None if it can).

    Addresses follow :mod:`hw.params`: a conv's weight rows ``ceil(cout / p_out) *
    ceil(cin / p_in)`` and lanes ``p_in * p_out``; a shift's rows ``ceil(C / P)`` and lanes P.
    """
    if stage.layer is None or stage.kind not in ("conv", "shift", "gap", "dynamic_conv",
                                                  "channel_attention", "spatial_attention"):
        return None
    i = stage.layer
    checks = []
    op = model.layers[i].op
    if stage.kind in ("conv", "dynamic_conv"):
        layer = model.layers[i]
        nbi, nbo = _cdiv(layer.cin, stage.lanes_in), _cdiv(layer.cout, stage.lanes_out)
        banks = layer.kernels or 1  # a dynamic conv stores K kernels' rows, bank after bank
        checks = [("row", banks * nbi * nbo - 1, f"weight rows with p_in={stage.lanes_in}, "
                                                 f"p_out={stage.lanes_out}"
                                                 + (f" for {banks} kernels" if banks > 1 else "")),
                  ("lane", stage.lanes_in * stage.lanes_out - 1,
                   f"weight lanes p_in * p_out = {stage.lanes_in} * {stage.lanes_out}")]
        if stage.kind == "dynamic_conv":
            checks.append(("lane", layer.cin - 1, "attention weight lanes (one per channel)"))
    elif stage.kind == "shift":
        c = stage.in_shape[2]
        checks = [("row", _cdiv(c, stage.lanes_in) - 1, f"shift rows with {stage.lanes_in} lanes"),
                  ("lane", stage.lanes_in - 1, "lanes")]
    elif stage.kind == "spatial_attention":
        c = stage.in_shape[2]
        checks = [("row", c - 1, "context matrix rows (one per channel)"),
                  ("lane", c - 1, "context matrix lanes (one per channel)")]
    for fld, top, what in checks:
        if top >= PORT_LIMITS[fld]:
            return (f"layer {i} ({op}): the parameter port cannot address it: {what} need "
                    f"{fld} {top}, but the beat's {fld} field is 16 bits (at most "
                    f"{PORT_LIMITS[fld] - 1}); give the layer more lanes in the config or "
                    f"raise max_multipliers")
    return None


def _build_stages(model, cfg, t):
    """Stages for target cycles/image ``t``; None when some stage cannot meet ``t``."""
    stages = []
    h0, w0, c0 = model.input_shape
    input_lanes = _stream_lanes(h0 * w0, c0, t, None)
    if input_lanes is None:
        return None
    lanes = input_lanes
    layers = model.layers
    ops = _layer_ops(model)
    skip_subsample = set()
    for i, layer, (h, w, c), (ho, wo, co), bits in ops:
        ov = cfg.layers.get(i, {})
        out_bits = model.act_bits if layer.op in ("conv1x1", "dynamic_conv1x1", "gap") \
            and layer.requant else bits
        if layer.op == "replicate":
            lo = ov.get("lanes") or _stream_lanes(h * w, co, t, None)
            if lo is None:
                return None
            stages.append(Stage("channel_map", i, (h, w, c), (ho, wo, co), lanes, lo, bits,
                                bits, source=replicate_map(c, layer.factor)))
            lanes = lo
            continue
        if layer.op == "dynamic_conv1x1":
            last = i == len(layers) - 1
            if "p_in" in ov:
                p_in, p_out = ov["p_in"], ov["p_out"]
            else:
                pp = _dynamic_lanes(model, i, layer, (h, w), t, lanes, bits)
                if pp is None:
                    return None
                p_in, p_out = pp
            if p_in != lanes:
                stages.append(_converter(h, w, c, lanes, p_in, bits, False))
            stages.append(Stage("dynamic_conv", i, (h, w, c), (ho, wo, co), p_in, p_out, bits,
                                out_bits if not last else 32, signed=last, requant=not last,
                                macs=_layer_macs(model, i)))
            lanes = p_out
            continue
        if layer.op == "conv1x1":
            pixels = ho * wo
            last = i == len(layers) - 1
            if "p_in" in ov:
                p_in, p_out = ov["p_in"], ov["p_out"]
            else:
                pp = _conv_lanes(pixels, layer.cin, layer.cout, t, lanes, not last)
                if pp is None:
                    return None
                p_in, p_out = pp
            if layer.stride == 2 and i not in skip_subsample:
                stages.append(Stage("subsample", i, (h, w, c), (ho, wo, c), lanes, lanes, bits,
                                    bits))
            if p_in != lanes:
                stages.append(_converter(ho, wo, c, lanes, p_in, bits, False))
            stages.append(Stage("conv", i, (ho, wo, c), (ho, wo, co), p_in, p_out, bits,
                                out_bits if not last else 32, signed=last, requant=not last,
                                macs=pixels * c * co))
            lanes = p_out
            continue
        lo = ov.get("lanes") or _stream_lanes(h * w, c, t, lanes)
        if lo is None or lo > c:
            return None
        if lo != lanes:
            stages.append(_converter(h, w, c, lanes, lo, bits, False))
        if layer.op == "shift":
            stride = 1
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if nxt is not None and nxt.op == "conv1x1" and nxt.stride == 2:
                stride = 2
                skip_subsample.add(i + 1)
            st = Stage("shift", i, (h, w, c), (_cdiv(h, stride), _cdiv(w, stride), c), lo, lo,
                       bits, bits, stride=stride)
        elif layer.op in _LANE_STAGES:
            st = Stage(_LANE_STAGES[layer.op], i, (h, w, c), (ho, wo, co), lo, lo, bits,
                       out_bits, macs=_layer_macs(model, i))
        else:
            raise PlanError(f"layer {i}: op {layer.op!r} has no hardware block")
        stages.append(st)
        lanes = lo
    # Logits leave one int32 per beat.
    n_cls = len(model.classes)
    if lanes != 1:
        stages.append(_converter(1, 1, n_cls, lanes, 1, 32, True))
    for st in stages:
        _with_cost(st, model, cfg.radius)
    if any(st.cycles > t for st in stages):
        return None  # e.g. the logits leave one per beat: never faster than `classes` cycles
    for st in stages:
        oh, ow, oc = st.out_shape
        row_beats = ow * _cdiv(oc, st.lanes_out)
        st.fifo_depth = max(4, min(cfg.max_fifo_depth, row_beats + 2 * _cdiv(oc, st.lanes_out)))
    return input_lanes, stages


def _layer_macs(model, i):
    """MACs per image of layer ``i`` (its op's own count, models.ops)."""
    from ..models.ops import OPS
    return OPS[model.layers[i].op].macs(model.layers[i], model.shapes()[i + 1])


def _dynamic_lanes(model, i, layer, hw_in, t, prev_lanes, bits):
    """(p_in, p_out) with the fewest multipliers whose DynamicConv1x1 meets ``t`` cycles per
    image by its own cost (the block's per-image attention and mixing work is part of its
    cycles, so the conv1x1 rule alone would not do)."""
    h, w = hw_in
    best = None
    # For each number of output folds only its fewest lanes can be best; cycles are not
    # monotonic in p_out (the MacArray's latency grows with its Requant groups), so every
    # such p_out is costed rather than bisected.
    p_outs = sorted({_cdiv(layer.cout, nbo) for nbo in range(1, layer.cout + 1)})
    for p_in in range(1, layer.cin + 1):
        for p_out in p_outs:
            cls, kw = _dynamic_block(h, w, layer, p_in, p_out, bits, model, i)
            cost = cls.cost(**kw)
            if cost.cycles > t:
                continue
            key = (cost.multiplier_count, p_in != prev_lanes, cost.cycles)
            if best is None or key < best[0]:
                best = (key, p_in, p_out)
    return None if best is None else (best[1], best[2])


def _converter(h, w, c, lanes_in, lanes_out, bits, signed):
    return Stage("channel_map", None, (h, w, c), (h, w, c), lanes_in, lanes_out, bits, bits,
                 signed=signed, source=list(range(c)))


def _own_cycles(model, i, layer, shape, bits):
    """Cycles per image of a version-2 engine at every lane count (its cost's own model)."""
    h, w, c = shape
    out = set()
    if layer.op == "dynamic_conv1x1":
        for p_in in range(1, layer.cin + 1):
            for p_out in {_cdiv(layer.cout, nbo) for nbo in range(1, layer.cout + 1)}:
                cls, kw = _dynamic_block(h, w, layer, p_in, p_out, bits, model, i)
                out.add(cls.cost(**kw).cycles)
        return out
    kind = _LANE_STAGES[layer.op]
    for lanes in range(1, c + 1):
        st = Stage(kind, i, shape, shape, lanes, lanes, bits, bits)
        cls, kw = stage_block(st, model, 1)
        out.add(cls.cost(**kw).cycles)
    return out


def plan_network(model, cfg=None):
    """Choose every stage's parallelism for ``model``.

    Parameters
    ----------
    model : models.artifact.Model
    cfg : PlanConfig or dict, optional
        From :func:`load_config` (or its JSON form read back); defaults to
        :data:`DEFAULT_CONFIG`.

    Returns
    -------
    Plan

    Raises
    ------
    PlanError
        A layer the hardware cannot build, a config that does not fit the model, no plan
        within ``max_multipliers`` (every multiplier counted, Requant included), or a plan
        the parameter port cannot address (checked before any Verilog is written).
    """
    cfg = as_config(cfg)
    check_buildable(model, cfg)
    macs = model.macs_per_image()
    # Candidate targets: every cycles/image some stage can hit exactly.
    cands = set()
    for i, layer, (h, w, c), (ho, wo, co), bits in _layer_ops(model):
        if layer.op in _MAC_OPS:
            # From all P_in*P_out multipliers (1 fold) to a single one (cin*cout folds).
            cands.update(ho * wo * k for k in range(1, layer.cin * layer.cout + 1))
        if layer.op != "conv1x1":
            cands.update(h * w * k for k in range(1, max(c, co) + 1))
        if layer.op in ("dynamic_conv1x1", "channel_attention", "spatial_attention"):
            # Whole-map engines add per-image work to the map's cycles: their own cost at
            # every lane count is a target they can hit exactly.
            cands.update(_own_cycles(model, i, layer, (h, w, c), bits))
    # A cheap lower bound on the multipliers a target t needs (each conv at least
    # ceil(MACs / t) MAC multipliers plus one Requant lane, a gap one), so that targets the
    # budget cannot reach are skipped without building their stages (a 260 -> 260 conv has
    # 67600 candidate targets).
    work = [(shapes_out[0] * shapes_out[1] * layer.cin * layer.cout,
             1 if layer.requant else 0)
            for i, layer, _, shapes_out, _ in _layer_ops(model) if layer.op in _MAC_OPS
            and i not in cfg.layers]
    fixed = sum(_conv_multipliers(layer.cin, cfg.layers[i]["p_in"], cfg.layers[i]["p_out"],
                                  layer.requant)
                for i, layer in enumerate(model.layers)
                if layer.op in _MAC_OPS and i in cfg.layers)
    fixed += sum(1 for layer in model.layers if layer.op == "gap")

    # Overridden convs have fixed cycles: no faster target can be met.
    t_min = max([o[0] * o[1] * _cdiv(layer.cin, cfg.layers[i]["p_in"])
                 * _cdiv(layer.cout, cfg.layers[i]["p_out"])
                 for i, layer, _, o, _ in _layer_ops(model)
                 if layer.op in _MAC_OPS and i in cfg.layers], default=0)

    def lower_bound(t):
        return fixed + sum(_cdiv(wk, t) + rq for wk, rq in work)

    best, fastest, overflow = None, None, None
    for t in sorted(cands):
        if fastest is not None and t > fastest * cfg.max_slowdown:
            break
        lb = lower_bound(t)
        if t < t_min or lb > cfg.max_multipliers:
            continue
        if best is not None and macs / (max(lb, 1) * t) <= best[0] + 1e-12:
            continue                             # cannot beat the efficiency already found
        built = _build_stages(model, cfg, t)
        if built is None:
            continue
        input_lanes, stages = built
        mults = sum(s.multipliers for s in stages)
        if mults > cfg.max_multipliers:
            continue
        why = next(((s, w) for s, w in ((s, port_overflow(s, model)) for s in stages) if w),
                   None)
        if why is not None:
            if why[0].layer in cfg.layers:
                raise PlanError(why[1])          # the user's lanes: no other plan helps
            # Slower targets only get fewer lanes, hence more rows: stop searching.
            overflow = why[1]
            break
        cycles = max(s.cycles for s in stages)
        eff = macs / max(1, mults * cycles)
        if fastest is None:
            fastest = cycles
        # Keep the most efficient plan seen; stop at the first (fastest) that is efficient
        # enough.
        if best is None or eff > best[0] + 1e-12:
            best = (eff, input_lanes, stages)
        if eff >= cfg.min_mac_efficiency:
            best = (eff, input_lanes, stages)
            break
    if best is None:
        if overflow is not None:
            raise PlanError(overflow)
        raise PlanError(f"no pipeline fits max_multipliers = {cfg.max_multipliers} (every "
                        f"multiplier counts: each conv1x1 needs at least one MAC multiplier "
                        f"and, unless it is the classifier, one Requant multiplier; a gap "
                        f"needs one); raise it in the config")
    _, input_lanes, stages = best
    return Plan(stages=stages, input_lanes=input_lanes, macs_per_image=macs,
                radius=cfg.radius, config=cfg.to_dict())
