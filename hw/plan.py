"""Dataflow plan: which block serves each layer, with how many lanes, and how fast.

The generator turns an artifact's layer list into a chain of *stages* (one engine per layer,
plus lane-width converters where neighbouring lane counts differ) and chooses every stage's
parallelism so that the pipeline is balanced: each stage's steady-state cycles per image stay
under a common target ``T``, and the smallest ``T`` whose multipliers fit the budget wins.

The analytical cycle model lives here too (:attr:`Stage.cycles`): a pipeline's steady-state
cycles per image is its slowest stage's. Beside it, DESIGN.md §3's physical limit:
``ideal = MACs per image / multipliers instantiated``, and the MAC efficiency.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .channel_map import replicate_map

__all__ = ["PlanError", "Stage", "Plan", "plan_network", "load_config", "DEFAULT_CONFIG"]

#: Defaults of the parallelism config (``--config PAR.json`` overrides any key).
DEFAULT_CONFIG = {
    # Multipliers the whole design may instantiate (the MacArrays' P_in * P_out summed).
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


class PlanError(ValueError):
    """The artifact's topology (or the config) cannot be built; the message names the layer."""


@dataclass
class Stage:
    """One hardware engine of the dataflow pipeline.

    Attributes
    ----------
    kind : str
        ``channel_map`` (replicate or lane converter), ``shift``, ``subsample``, ``conv``,
        ``maxpool``, ``gap``.
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
    cycles : int
        Steady-state cycles per image of this stage (analytical model).
    multipliers : int
        Multipliers instantiated (``p_in * p_out`` for a conv, else 0).
    macs : int
        MACs per image done by this stage.
    fifo_depth : int
        Depth, in beats, of the FIFO after this stage (0: none).
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
    cycles: int = 0
    multipliers: int = 0
    macs: int = 0
    fifo_depth: int = 0

    @property
    def name(self):
        """Short unique-enough label, e.g. ``L2.conv`` or ``cvt``."""
        return f"L{self.layer}.{self.kind}" if self.layer is not None else "cvt"


@dataclass
class Plan:
    """The whole pipeline and its figures.

    Attributes
    ----------
    stages : list of Stage
    input_lanes : int
        Lanes of the image input stream.
    predicted_cycles_per_image : int
        The slowest stage's cycles per image (steady state, images back to back).
    multipliers : int
    macs_per_image : int
    ideal_cycles_per_image : float
        ``macs_per_image / multipliers`` (DESIGN.md §3).
    predicted_mac_efficiency : float
        ``macs / (multipliers * predicted_cycles_per_image)``.
    radius : int
    config : dict
    """

    stages: list
    input_lanes: int
    predicted_cycles_per_image: int
    multipliers: int
    macs_per_image: int
    radius: int
    config: dict = field(default_factory=dict)

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
            if s.kind == "conv":
                out[s.layer] = {"p_in": s.lanes_in, "p_out": s.lanes_out}
            elif s.kind != "subsample":
                out[s.layer] = {"lanes": s.lanes_out}
        return out

    def to_dict(self):
        return {
            "input_lanes": self.input_lanes,
            "radius": self.radius,
            "multipliers": self.multipliers,
            "macs_per_image": self.macs_per_image,
            "predicted_cycles_per_image": self.predicted_cycles_per_image,
            "ideal_cycles_per_image": self.ideal_cycles_per_image,
            "predicted_mac_efficiency": self.predicted_mac_efficiency,
            "stages": [dict(asdict(s), name=s.name) for s in self.stages],
            "config": self.config,
        }

    def summary_text(self, model=None):
        """A readable table of the pipeline."""
        lines = []
        if model is not None:
            lines.append(f"model {model.name}: input {'x'.join(map(str, model.input_shape))}, "
                         f"{len(model.layers)} layers, {self.macs_per_image} MACs/image")
        lines.append(f"{'stage':<14}{'in HxWxC':>12}{'out HxWxC':>12}{'lanes':>9}"
                     f"{'mults':>7}{'cycles/img':>12}{'fifo':>6}")
        for s in self.stages:
            lanes = f"{s.lanes_in}>{s.lanes_out}"
            lines.append(f"{s.name:<14}{'x'.join(map(str, s.in_shape)):>12}"
                         f"{'x'.join(map(str, s.out_shape)):>12}{lanes:>9}{s.multipliers:>7}"
                         f"{s.cycles:>12}{s.fifo_depth:>6}")
        lines.append(f"multipliers {self.multipliers}; predicted {self.predicted_cycles_per_image}"
                     f" cycles/image; ideal {self.ideal_cycles_per_image:.1f}; predicted MAC "
                     f"efficiency {self.predicted_mac_efficiency:.3f}")
        return "\n".join(lines)


def load_config(path=None, overrides=None):
    """Read a parallelism config (JSON) over :data:`DEFAULT_CONFIG`.

    Raises
    ------
    PlanError
        Unreadable file, unknown key or bad value.
    """
    cfg = json.loads(json.dumps(DEFAULT_CONFIG))
    if path is not None:
        try:
            user = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise PlanError(f"config {path}: cannot read it as JSON ({e})") from None
        if not isinstance(user, dict):
            raise PlanError(f"config {path}: must be a JSON object")
        for k, v in user.items():
            if k not in DEFAULT_CONFIG:
                raise PlanError(f"config {path}: unknown key {k!r} (known: "
                                f"{', '.join(DEFAULT_CONFIG)})")
            cfg[k] = v
    if overrides:
        cfg.update(overrides)
    if not isinstance(cfg["max_multipliers"], int) or cfg["max_multipliers"] < 1:
        raise PlanError("config: 'max_multipliers' must be a positive integer")
    if not 0 <= cfg["min_mac_efficiency"] <= 1 or cfg["max_slowdown"] < 1:
        raise PlanError("config: 'min_mac_efficiency' must be in [0, 1] and 'max_slowdown' >= 1")
    if cfg["radius"] not in (1, 2, 3):
        raise PlanError("config: 'radius' must be 1, 2 or 3")
    cfg["layers"] = {str(k): v for k, v in cfg["layers"].items()}
    return cfg


def _cdiv(a, b):
    return -(-a // b)


def _stream_lanes(hw, c, t, prev_lanes):
    """Fewest lanes (preferring the producer's) carrying an hw-pixel, c-channel map in <= t cycles."""
    folds = t // hw
    if folds < 1:
        return None
    if prev_lanes is not None and prev_lanes <= c and _cdiv(c, prev_lanes) <= folds:
        return prev_lanes
    return min(c, _cdiv(c, min(folds, c)))


def _conv_lanes(pixels, cin, cout, t, prev_lanes):
    """(p_in, p_out) with the fewest multipliers doing the conv in <= t cycles per image."""
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
        key = (p_in * p_out, p_in != prev_lanes, cycles)
        if best is None or key < best[0]:
            best = (key, p_in, p_out)
    return None if best is None else (best[1], best[2])


def _layer_ops(model):
    """(layer index, layer, in shape, out shape, value bits in) for every layer."""
    shapes = model.shapes()
    bits = model.value_bits()
    return [(i, layer, shapes[i], shapes[i + 1], bits[i]) for i, layer in enumerate(model.layers)]


def check_buildable(model, cfg):
    """Refuse, up front and by layer, what the hardware cannot build.

    Raises
    ------
    PlanError
    """
    r = cfg["radius"]
    for i, layer, (h, w, c), out, bits in _layer_ops(model):
        if layer.op == "shift":
            worst = int(abs(layer.shifts.astype(int)).max()) if layer.shifts.size else 0
            if worst > r:
                raise PlanError(f"layer {i} (shift): shifts reach {worst} pixels but the "
                                f"ShiftUnit is built for radius {r}; set \"radius\": {worst} in "
                                f"the config")
        if layer.op == "replicate" and c * layer.factor > 4096:
            raise PlanError(f"layer {i} (replicate): {c * layer.factor} channels is more than "
                            f"the 4096 a pixel buffer is built for")
        ov = cfg["layers"].get(str(i))
        if ov is not None:
            if layer.op == "conv1x1":
                bad = set(ov) - {"p_in", "p_out"}
            else:
                bad = set(ov) - {"lanes"}
            if bad:
                raise PlanError(f"config: layer {i} ({layer.op}) does not take "
                                f"{', '.join(sorted(bad))}")


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
        ov = cfg["layers"].get(str(i), {})
        out_bits = model.act_bits if layer.op in ("conv1x1", "gap") and layer.requant else bits
        if layer.op == "replicate":
            lo = ov.get("lanes") or _stream_lanes(h * w, co, t, None)
            if lo is None:
                return None
            st = Stage("channel_map", i, (h, w, c), (ho, wo, co), lanes, lo, bits, bits,
                       source=replicate_map(c, layer.factor))
            st.cycles = h * w * max(_cdiv(c, lanes), _cdiv(co, lo))
            stages.append(st)
            lanes = lo
            continue
        if layer.op == "conv1x1":
            pixels = ho * wo
            if "p_in" in ov or "p_out" in ov:
                p_in, p_out = ov.get("p_in", 1), ov.get("p_out", 1)
                if not (1 <= p_in <= layer.cin and 1 <= p_out <= layer.cout):
                    raise PlanError(f"config: layer {i} (conv1x1): p_in must be in [1, "
                                    f"{layer.cin}] and p_out in [1, {layer.cout}]")
            else:
                pp = _conv_lanes(pixels, layer.cin, layer.cout, t, lanes)
                if pp is None:
                    return None
                p_in, p_out = pp
            if layer.stride == 2 and i not in skip_subsample:
                st = Stage("subsample", i, (h, w, c), (ho, wo, c), lanes, lanes, bits, bits)
                st.cycles = h * w * _cdiv(c, lanes)
                stages.append(st)
            if p_in != lanes:
                stages.append(_converter(ho, wo, c, lanes, p_in, bits, False))
            last = i == len(layers) - 1
            st = Stage("conv", i, (ho, wo, c), (ho, wo, co), p_in, p_out, bits,
                       out_bits if not last else 32, signed=last, requant=not last)
            st.cycles = pixels * _cdiv(c, p_in) * _cdiv(co, p_out)
            st.multipliers = p_in * p_out
            st.macs = pixels * c * co
            stages.append(st)
            lanes = p_out
            continue
        lo = ov.get("lanes") or _stream_lanes(h * w, c, t, lanes)
        if lo is None or lo > c:
            if ov.get("lanes"):
                raise PlanError(f"config: layer {i} ({layer.op}): lanes must be in [1, {c}]")
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
            st.cycles = h * w * _cdiv(c, lo)
        elif layer.op == "maxpool2":
            st = Stage("maxpool", i, (h, w, c), (ho, wo, co), lo, lo, bits, bits)
            st.cycles = h * w * _cdiv(c, lo)
        elif layer.op == "gap":
            st = Stage("gap", i, (h, w, c), (1, 1, c), lo, lo, bits, out_bits)
            # One beat in per cycle; the pooled pixel drains while the next image streams in
            # (GlobalAvgPool: no per-image overhead).
            st.cycles = h * w * _cdiv(c, lo)
        else:
            raise PlanError(f"layer {i}: op {layer.op!r} has no hardware block")
        stages.append(st)
        lanes = lo
    # Logits leave one int32 per beat.
    n_cls = len(model.classes)
    if lanes != 1:
        stages.append(_converter(1, 1, n_cls, lanes, 1, 32, True))
    if any(st.cycles > t for st in stages):
        return None  # e.g. the logits leave one per beat: never faster than `classes` cycles
    for st in stages:
        oh, ow, oc = st.out_shape
        row_beats = ow * _cdiv(oc, st.lanes_out)
        st.fifo_depth = max(4, min(cfg["max_fifo_depth"], row_beats + 2 * _cdiv(oc, st.lanes_out)))
    return input_lanes, stages


def _converter(h, w, c, lanes_in, lanes_out, bits, signed):
    st = Stage("channel_map", None, (h, w, c), (h, w, c), lanes_in, lanes_out, bits, bits,
               signed=signed, source=list(range(c)))
    st.cycles = h * w * max(_cdiv(c, lanes_in), _cdiv(c, lanes_out))
    return st


def plan_network(model, cfg=None):
    """Choose every stage's parallelism for ``model``.

    Parameters
    ----------
    model : models.artifact.Model
    cfg : dict, optional
        From :func:`load_config`; defaults to :data:`DEFAULT_CONFIG`.

    Returns
    -------
    Plan

    Raises
    ------
    PlanError
        A layer the hardware cannot build, or no plan fits ``max_multipliers``.
    """
    cfg = load_config(overrides=None) if cfg is None else cfg
    check_buildable(model, cfg)
    macs = model.macs_per_image()
    # Candidate targets: every cycles/image some stage can hit exactly.
    cands = set()
    for i, layer, (h, w, c), (ho, wo, co), bits in _layer_ops(model):
        if layer.op == "conv1x1":
            # From all P_in*P_out multipliers (1 fold) to a single one (cin*cout folds).
            cands.update(ho * wo * k for k in range(1, layer.cin * layer.cout + 1))
        else:
            cands.update(h * w * k for k in range(1, max(c, co) + 1))
    best, fastest = None, None
    for t in sorted(cands):
        if fastest is not None and t > fastest * cfg["max_slowdown"]:
            break
        built = _build_stages(model, cfg, t)
        if built is None:
            continue
        input_lanes, stages = built
        mults = sum(s.multipliers for s in stages)
        if mults > cfg["max_multipliers"]:
            continue
        cycles = max(s.cycles for s in stages)
        eff = macs / max(1, mults * cycles)
        if fastest is None:
            fastest = cycles
        # Keep the most efficient plan seen; stop at the first (fastest) that is efficient
        # enough.
        if best is None or eff > best[0] + 1e-12:
            best = (eff, input_lanes, stages)
        if eff >= cfg["min_mac_efficiency"]:
            best = (eff, input_lanes, stages)
            break
    if best is None:
        raise PlanError(f"no pipeline fits max_multipliers = {cfg['max_multipliers']} (the "
                        f"network needs at least one multiplier per conv1x1 layer); raise it in "
                        f"the config")
    _, input_lanes, stages = best
    return Plan(stages=stages, input_lanes=input_lanes,
                predicted_cycles_per_image=max(s.cycles for s in stages),
                multipliers=sum(s.multipliers for s in stages), macs_per_image=macs,
                radius=cfg["radius"], config=cfg)
