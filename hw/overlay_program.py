"""Overlay engine, software side: the layer program compiler and its NumPy executor (issue #10).

The overlay (DESIGN.md §3 "Overlay") is one shift/MAC engine reused layer after layer: the
feature maps live in on-chip RAM, and a *layer program* generated from the artifact drives the
engine. This module turns a :class:`~models.artifact.Model` into that program and the memory
images the engine reads (spec ``/work/v3/OVERLAY.md`` §2-§5, §8):

* :func:`compile_overlay` groups the layers into *passes*, one conv1x1 each:
  ``image -> { [replicate] [shift] conv1x1 [maxpool2] [gap] }*``; the replicate and shift
  become the pass's *gather table* (a shift is only an address offset: zero cost), a maxpool2
  and a gap directly after the conv are fused into its pass, the last conv is the classifier
  (raw int32 logits). With ``OverlayConfig.attention``, a channel_attention or
  spatial_attention is a pass of its own (op ECA, SAM; a gap after it fused), and a
  dynamic_conv1x1 is a DYN pass (its kernel attention, writing the mixed weights) before its
  conv pass (``docs/overlay_attention.md``). Anything else is refused in words
  (:class:`OverlayFitError`).
* :class:`OverlayPlan` holds the program (:data:`PASS_FIELDS` per pass, an END row after the
  last), the weight, channel (bias, m, sh, qmax) and gather memories, their parameter words
  (:meth:`OverlayPlan.param_words`, ``hw.params`` format, ``layer`` = 0xFF) and the engine's
  resources (:func:`overlay_cost`).
* :func:`run_overlay` executes the program over the memory images only (never the artifact's
  layers), with the hardware's layouts: feature maps in two buffers of two parity banks,
  channels padded to even, gather offsets with zero fill at the borders, fused pool in window
  order, fused gap. It is tested bit for bit against :mod:`models.golden`, which proves the
  compiler and the layouts; the device model uses it as the overlay's engine
  (:func:`decode_param_words`: words -> memories -> :func:`run_overlay`).

Memory layouts (spec §3), for the engine's ``P = lanes`` MAC lanes:

* feature map H×W×C, ``Cp = C + (C & 1)``: value (y, x, c) in bank ``c & 1`` of its buffer at
  address ``(y*W + x) * Cp/2 + (c >> 1)``;
* weight w[o, i] of a pass at row ``wbase + (o // P) * cin + i``, lane ``o % P``;
* channel tables (bias, m, sh, qmax) of output channel o at entry ``cbase + o``; a fused
  gap's (0, m, sh, qmax) at entries ``gap_ent`` and ``gap_ent + 1`` (even) after them;
* gather entry of conv input channel i at ``gbase + i``: ``(bank, off, dy, dx)`` with the
  source channel ``s = i % C_src`` (a replicate folds in), ``bank = s & 1``,
  ``off = (dy*W + dx) * Cp_src/2 + (s >> 1)``; the read for output (y, x) is at
  ``y*src_row + x*src_col + off`` when ``0 <= s*y + dy < H`` and ``0 <= s*x + dx < W``,
  else it reads 0.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .params import OVERLAY_LAYER, PARAM_LAYOUT, ParamKind, encode_word, gather_data
from .resources import Cost, MemorySpec, Multiplier

__all__ = ["OverlayConfig", "OverlayFitError", "OverlayPlan", "OverlayMemories", "PASS_FIELDS",
           "OP_END", "OP_CONV", "OP_ECA", "OP_SAM", "OP_DYN", "ATTENTION_OPS",
           "ECA_HEAD", "SAM_HEAD", "DYN_HEAD", "compile_overlay",
           "run_overlay", "decode_param_words", "overlay_cost", "INT32_MAX"]

#: The fields of one program row, in lane order (spec §4; ``pool`` comes before ``ho``, ``wo``
#: and ``src_row`` before ``src_col``: the engine derives its window and address steps while
#: it captures the row, from the fields already read).
PASS_FIELDS = ("op", "src", "dst", "h", "w", "stride", "pool", "ho", "wo", "cin", "cout",
               "groups", "last_group", "gbase", "wbase", "cbase", "src_row", "src_col", "gap",
               "gap_ent", "raw", "out_h", "out_w", "dst_cp2", "in_c")

#: Program ``op`` values: END stops the engine (the row after the last pass); ECA is a
#: channel_attention pass (only on an engine with ``attention`` hardware, see
#: :class:`OverlayConfig`).
OP_END, OP_CONV, OP_ECA, OP_SAM, OP_DYN = 0, 1, 2, 3, 4

#: The version-2 ops the overlay's optional attention hardware can run
#: (``OverlayConfig.attention``).
ATTENTION_OPS = ("channel_attention", "spatial_attention", "dynamic_conv1x1")

#: Attention-table entries of a channel_attention pass before its kernel taps (at ``cbase``):
#: bias (int32); pool_m | pool_sh << 16 | qmax << 24; z_m | z_sh << 16; gap_m | gap_sh << 16
#: (0 without a fused gap). Then the ``k`` taps (int8, sign-extended) and the 256 LUT
#: entries (``lut[i + 128]`` for ``i`` in [-128, 127]).
ECA_HEAD = 4

#: The same for a spatial_attention pass: bias (int32, z's); pool_m | pool_sh << 16 |
#: qmax << 24; z_m | z_sh << 16; gap_m | gap_sh << 16 (0 without a fused gap);
#: ctx_m | ctx_sh << 16. Then the 256 LUT entries, the C ``ctx_bias`` (int32) and the C×C
#: ``ctx_weight`` (int8, row ``c`` at ``c * C``).
SAM_HEAD = 5

#: The same for a dynamic_conv1x1's attention pass (op DYN, before its conv pass):
#: att_pool_m | att_pool_sh << 16 | qmax << 24; att_m | att_sh << 16; K | t << 8. Then the
#: 256 ``exp_lut`` entries, the K ``att_bias`` (int32), the K×cin ``att_weight`` (int8, row
#: ``k`` at ``k * cin``), the kernels' weights in the order the unit mixes them (for each
#: weight-memory row of the conv, group by group and input channel by input channel: for
#: each lane ``o`` of the group, the K values ``weight[k, o, i]``), then for each output
#: channel ``o`` the K ``bias[k, o]`` (int32).
DYN_HEAD = 3

#: The accumulator is 32 bits (bias is added at requant, wider): every partial sum must fit.
INT32_MAX = (1 << 31) - 1

_FIELD = {name: n for n, name in enumerate(PASS_FIELDS)}

#: Range of each config field: (low, high) inclusive, or a tuple of allowed values.
_CONFIG_RANGES = {
    "lanes": (2, 64),
    "requant_units": (1, 2),
    # The gather offset is signed 20 bits: a bank is at most 2**19 deep.
    "fm_words": (16, 1 << 19),
    # The parameter word's row field is 16 bits.
    "weight_rows": (1, 1 << 16),
    "channel_rows": (1, 1 << 16),
    "gather_rows": (1, 1 << 16),
    "max_passes": (2, 1 << 16),
    # The parameter word's row field is 16 bits.
    "attention_rows": (16, 1 << 16),
    # Rows of the weight store in the feature-map banks' upper addresses (0: none).
    "weight_store": (0, 1 << 16),
}

PRIMITIVES = ("generic", "ice40")

#: MAC lanes of an engine with a weight store: four banks of 16 bits are one row of 8 int8
#: weights.
STORE_LANES = 8

#: The SB_SPRAM256KA's depth: the ``ice40`` feature-map banks are exactly one SPRAM each.
SPRAM_WORDS = 16384


class OverlayFitError(ValueError):
    """The network cannot run on the overlay engine as configured; the message names the
    layer (index and op) or the memory, what it needs and what to do."""


@dataclass(frozen=True)
class OverlayConfig:
    """The overlay engine's elaboration parameters (spec §2); validated on construction.

    Attributes
    ----------
    lanes : int
        P: MAC multipliers, the output channels computed at once (one *group*). Even, 2..64.
    requant_units : int
        R in {1, 2}: requant multipliers (``acc * m``), outputs per cycle.
    fm_words : int
        Depth of each of the 4 feature-map banks (8-bit values).
    weight_rows : int
        Rows of P weights (stored as 8 bits).
    channel_rows : int
        Entries of the per-output-channel tables (bias, m, sh, qmax).
    gather_rows : int
        Entries of the gather table.
    max_passes : int
        Program rows (the END row included).
    primitives : str
        ``"generic"`` (Amaranth ``*`` and ``Memory``) or ``"ice40"`` (``SB_MAC16`` lane pairs,
        ``SB_SPRAM256KA`` banks; requires ``fm_words == 16384``).
    attention : tuple of str
        The version-2 ops the engine gets hardware for (names from :data:`ATTENTION_OPS`;
        JSON: a list). Empty (the default, and the iCEBreaker build's config): no attention
        hardware at all, the engine elaborates exactly as without this option.
    attention_rows : int
        Entries (32 bits) of the attention table (constants, kernel taps and LUTs of every
        attention pass); only with ``attention``.
    weight_store : int
        0 (the default): the weights and the gather entries live in the ``weight_rows``-
        and ``gather_rows``-entry block-RAM tables. Otherwise they live in the feature-map
        banks' upper ``weight_store`` addresses (the *store*; the banks are 16 bits wide
        then, the maps use the low byte): the network's weight rows in its lower half (the
        four banks side by side, one 64-bit row of 8 lanes), its gather entries in the
        third quarter (banks X even and X odd, 32 bits), its channel entries in the last
        (bias, m, sh and qmax: 64 bits). Before each group the engine copies the group's
        ``cin`` weight rows into the ``weight_rows``-row block-RAM *weight cache*, and before
        a pass's first group the pass's ``cin`` gather entries into the ``gather_rows``-entry
        gather table and its ``cout + 3`` channel entries into the channel tables (entry
        ``e`` at ``e mod channel_rows``, a power of two), while no bank is read or written
        (``docs/boards.md``, "What ``mnist-s`` on the UP5K would take"). A power of two of
        at most half of ``fm_words`` (the maps keep the lower addresses); only with 8 lanes
        and without attention hardware. JSON: left out when 0.
    """

    lanes: int = 16
    requant_units: int = 2
    fm_words: int = 16384
    weight_rows: int = 512
    channel_rows: int = 512
    gather_rows: int = 512
    max_passes: int = 16
    primitives: str = "generic"
    attention: tuple = ()
    attention_rows: int = 1024
    weight_store: int = 0

    def __post_init__(self):
        if isinstance(self.attention, (list, tuple)):
            # JSON gives a list; the frozen config keeps a tuple (hashable, comparable).
            object.__setattr__(self, "attention", tuple(self.attention))
        self.validate()

    def validate(self):
        """Check every field.

        Raises
        ------
        ValueError
            Naming the field, its range and the value.
        """
        for name, (lo, hi) in _CONFIG_RANGES.items():
            v = getattr(self, name)
            if type(v) is not int or not lo <= v <= hi:
                raise ValueError(f"overlay config: {name} must be an integer in [{lo}, {hi}], "
                                 f"got {v!r}")
        if self.lanes % 2:
            raise ValueError(f"overlay config: lanes must be even (MAC lanes come in pairs, "
                             f"one SB_MAC16 per pair on iCE40), in [2, 64], got {self.lanes}")
        if self.primitives not in PRIMITIVES:
            raise ValueError(f"overlay config: primitives must be one of "
                             f"{', '.join(map(repr, PRIMITIVES))}, got {self.primitives!r}")
        if self.primitives == "ice40" and self.fm_words != SPRAM_WORDS:
            raise ValueError(f"overlay config: primitives 'ice40' puts each feature-map bank in "
                             f"one SB_SPRAM256KA, so fm_words must be {SPRAM_WORDS}, got "
                             f"{self.fm_words}")
        att = self.attention
        if not isinstance(att, tuple) or any(not isinstance(a, str) for a in att):
            raise ValueError(f"overlay config: attention must be a list of op names from "
                             f"{list(ATTENTION_OPS)}, got {att!r}")
        ws = self.weight_store
        if ws:
            if ws & (ws - 1) or 2 * ws > self.fm_words or self.fm_words % ws:
                raise ValueError(f"overlay config: weight_store must be 0 or a power of two of "
                                 f"at most fm_words / 2 = {self.fm_words // 2} dividing "
                                 f"fm_words (the store is the banks' upper addresses), got "
                                 f"{ws}")
            if self.channel_rows & (self.channel_rows - 1):
                raise ValueError(f"overlay config: with a weight_store, channel_rows must be a "
                                 f"power of two (a pass's entries are copied to their entry "
                                 f"modulo channel_rows), got {self.channel_rows}")
            if self.lanes != STORE_LANES or att:
                raise ValueError(f"overlay config: weight_store needs lanes = {STORE_LANES} "
                                 f"(four 16-bit banks side by side are one row of 8 int8 "
                                 f"weights) and no attention hardware, got lanes "
                                 f"{self.lanes}, attention {list(att)}")
        bad = [a for a in att if a not in ATTENTION_OPS]
        if bad or len(set(att)) != len(att):
            raise ValueError(f"overlay config: attention {list(att)}: "
                             + (f"unknown or unsupported op(s) {bad}" if bad else
                                "an op named twice")
                             + f"; the overlay's attention hardware runs {list(ATTENTION_OPS)}")

    def to_json(self):
        """The JSON form (a dict of the fields), accepted back by :meth:`from_json`.

        Without attention hardware the attention fields are left out, so the JSON (and the
        design id a device descriptor derives from it) is what it was before the option."""
        out = asdict(self)
        if not self.weight_store:
            del out["weight_store"]
        if not self.attention:
            del out["attention"], out["attention_rows"]
        else:
            out["attention"] = list(self.attention)
        return out

    @classmethod
    def from_json(cls, data, source="overlay config"):
        """Build from a JSON-like mapping; missing keys take their defaults.

        Raises
        ------
        ValueError
            Not a mapping, an unknown key, or a field out of range.
        """
        if isinstance(data, OverlayConfig):
            return data
        if isinstance(data, str):
            data = json.loads(data)
        if not isinstance(data, dict):
            raise ValueError(f"{source}: must be a JSON object, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        for k in data:
            if k not in known:
                raise ValueError(f"{source}: unknown key {k!r} (known: {', '.join(known)})")
        return cls(**data)


# --- resources ---------------------------------------------------------------------------------

def overlay_cost(config, cycles=0):
    """Resources of the overlay engine for ``config`` (nothing depends on a model).

    * ``P`` MAC multipliers, signed 8-bit weight × unsigned 8-bit activation;
    * ``R`` requant multipliers, the signed 33-bit ``acc + bias`` × unsigned 16-bit ``m``
      (the gap requant shares them);
    * the memories of spec §3: four feature-map banks, the weight rows (P lanes × 8 bits),
      the channel tables (bias 32, m 16, sh 6, qmax 8 bits), the gather table (29 bits) and
      the program (``max_passes`` × ``len(PASS_FIELDS)`` 32-bit fields).

    The engine author may refine this (``hw/overlay.py``); it is the count the plan reports.
    """
    c = OverlayConfig.from_json(config)
    mults = [Multiplier.amaranth("mac", c.lanes, 8, True, 8, False),
             Multiplier.amaranth("requant", c.requant_units, 33, True, 16, False)]
    # (with a weight store the banks are 16 bits wide: two lanes of a weight row each)
    mems = [MemorySpec(f"fm.{buf}{bank}", c.fm_words, 16 if c.weight_store else 8)
            for buf in "XY" for bank in "eo"]
    mems += [MemorySpec("weights", c.weight_rows, 8 * c.lanes),
             MemorySpec("bias", c.channel_rows, 32), MemorySpec("m", c.channel_rows, 16),
             MemorySpec("sh", c.channel_rows, 6), MemorySpec("qmax", c.channel_rows, 8),
             MemorySpec("gather", c.gather_rows, 29),
             MemorySpec("program", c.max_passes * len(PASS_FIELDS), 32)]
    if c.attention:
        mults.append(Multiplier.amaranth("attention", 1, 33, True, 16, False))
        mems += [MemorySpec("attention", c.attention_rows, 32),
                 MemorySpec("att_p", c.channel_rows, 8), MemorySpec("att_a", c.channel_rows, 9)]
    return Cost(cycles=cycles, multipliers=mults, memories=mems)


# --- memories and plan -------------------------------------------------------------------------

@dataclass(eq=False)
class OverlayMemories:
    """The engine's memory images: everything :func:`run_overlay` reads.

    Attributes
    ----------
    config : OverlayConfig
    program : ndarray of int64 [rows, len(PASS_FIELDS)]
    weights : ndarray of int64 [rows, lanes]
    bias, m, sh, qmax : ndarray of int64 [entries]
    gather : ndarray of int64 [entries]
        Packed as :data:`hw.params.GATHER_DATA`.
    att : ndarray of int64 [entries], optional
        The attention table (32-bit words as unsigned, written with ``ParamKind.LUT``);
        empty without attention passes.
    """

    config: OverlayConfig
    program: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    m: np.ndarray
    sh: np.ndarray
    qmax: np.ndarray
    gather: np.ndarray
    att: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


#: The channel tables in parameter-kind order.
_CHANNEL_KINDS = (("bias", ParamKind.BIAS), ("m", ParamKind.M), ("sh", ParamKind.SH),
                  ("qmax", ParamKind.QMAX))


@dataclass(eq=False)
class OverlayPlan(OverlayMemories):
    """A compiled overlay program (see :func:`compile_overlay`).

    The memory images hold the used rows only (``program`` has ``len(passes) + 1`` rows, the
    last one END); the engine's memories are the config's sizes, the rest unused.

    Attributes
    ----------
    passes : tuple of dict
        Per pass, every field of :data:`PASS_FIELDS`.
    layers : tuple of tuple of int
        The artifact layer indices each pass runs (for messages and the summary).
    macs_per_image : int
        The network's multiply-accumulates per image (``Model.macs_per_image``; the engine
        skips the conv outputs a maxpool drops, so it may do fewer).
    model_name : str
    classes : int
    """

    engine = "overlay"
    input_lanes = 1

    passes: tuple = ()
    layers: tuple = ()
    macs_per_image: int = 0
    model_name: str = ""
    classes: int = 0
    layer_ops: tuple = field(default=(), repr=False)

    def param_words(self):
        """Every parameter beat the overlay engine needs, encoded as
        :func:`hw.params.encode_word` does (``layer`` = :data:`~hw.params.OVERLAY_LAYER`).

        The program (every field of every pass and of the END row), the weights (every lane
        of every used row, unused lanes 0), the channel tables and the gather table.

        Returns
        -------
        list of int
        """
        pack = _packer()
        words = []
        for r, row in enumerate(self.program.tolist()):
            words += [pack(ParamKind.PROGRAM, r, f, v) for f, v in enumerate(row)]
        # Every lane of every used weight row, the unused lanes of a pass's last group as 0
        # (spec §3), so that a device's memories equal these images whatever it held before.
        for r, row in enumerate(self.weights.tolist()):
            words += [pack(ParamKind.WEIGHT, r, lane, v) for lane, v in enumerate(row)]
        for name, kind in _CHANNEL_KINDS:
            words += [pack(kind, e, 0, v) for e, v in enumerate(getattr(self, name).tolist())]
        words += [pack(ParamKind.GATHER, e, 0, v) for e, v in enumerate(self.gather.tolist())]
        # The attention table (channel_attention passes: constants, taps, LUT).
        words += [pack(ParamKind.LUT, e, 0, v) for e, v in enumerate(self.att.tolist())]
        return words

    def cycles_per_image(self):
        """Cycles per image, images back to back (``hw/overlay_timing.image_cycles``).

        Raises
        ------
        NotImplementedError
            ``hw/overlay_timing.py`` (the engine author's) does not exist yet.
        """
        try:
            from .overlay_timing import image_cycles
        except ImportError as e:
            raise NotImplementedError(
                f"overlay cycles per image: hw/overlay_timing.py (image_cycles, written with "
                f"the engine hw/overlay.py) is not available ({e})") from None
        return int(image_cycles(self))

    def cost(self):
        """The engine's resources (:func:`overlay_cost`), cycles from :meth:`cycles_per_image`
        (0 while the timing model does not exist)."""
        try:
            cycles = self.cycles_per_image()
        except NotImplementedError:
            cycles = 0
        try:
            from .overlay import overlay_engine_cost
        except ImportError:
            return overlay_cost(self.config, cycles)
        # The engine's own count, as its RTL builds them (SB_MAC16 pairs on iCE40, the
        # requant split into two 16-bit halves).
        return overlay_engine_cost(self.config, cycles)

    @property
    def predicted_cycles_per_image(self):
        """:meth:`cycles_per_image` under the dataflow plan's name (builds and reports read
        either plan through it)."""
        return self.cycles_per_image()

    @property
    def multipliers(self):
        """Every hardware multiplier of the engine (MAC lanes and requant)."""
        return self.cost().multiplier_count

    def dsp(self, family):
        """DSP blocks of the engine on ``family`` (see :func:`hw.resources.dsp_blocks`): with
        the iCE40 primitives the MAC lanes are ``SB_MAC16`` pairs, and each requant unit's
        two 16-bit halves take one block each (Yosys ``-dsp``)."""
        return self.cost().dsp(family)

    def resource_line(self):
        """``N multipliers (M MULT18X18D on ECP5, K SB_MAC16 on iCE40)``, as the dataflow
        plan's."""
        cost = self.cost()
        return (f"{cost.multiplier_count} multipliers ({self.dsp('ecp5')} MULT18X18D on ECP5, "
                f"{self.dsp('ice40')} SB_MAC16 on iCE40)")

    def to_dict(self):
        """The JSON form: engine, config, passes (every field) with their layers, tables
        used, multipliers, memories, MACs and cycles per image (None without the timing
        model)."""
        cost = self.cost()
        try:
            cycles = self.cycles_per_image()
        except NotImplementedError:
            cycles = None
        return {
            "engine": self.engine,
            "config": self.config.to_json(),
            "passes": [dict(p, layers=list(lays)) for p, lays in zip(self.passes, self.layers)],
            "used": {k: {"used": u, "capacity": c} for k, (u, c) in self.memories_used().items()},
            "multipliers": cost.multiplier_count,
            "dsp": {f: cost.dsp(f) for f in ("ecp5", "ice40")},
            "memories": [{"name": m.name, "depth": m.depth, "width": m.width}
                         for m in cost.memories],
            "memory_bits": cost.memory_bits,
            "macs_per_image": self.macs_per_image,
            "cycles_per_image": cycles,
        }

    def memories_used(self):
        """Rows used of each table: dict name -> (used, capacity)."""
        c = self.config
        used = {"program": (len(self.program), c.max_passes),
                "weights": (len(self.weights), store_capacity(c)[0]),
                "channels": (len(self.bias), store_capacity(c)[2]),
                "gather": (len(self.gather), store_capacity(c)[1]),
                "fm": (max([_map_words(p["h"], p["w"], p["in_c"]) for p in self.passes[:1]]
                           + [_map_words(p["out_h"], p["out_w"], p["cout"])
                              for p in self.passes if not p["raw"]]),
                       _fm_capacity(c)[0])}
        if c.attention:
            used["attention"] = (len(self.att), c.attention_rows)
        return used

    def summary(self):
        """Lines for the CLI: the config, the passes table, the memories used."""
        c = self.config
        lines = [f"overlay engine: {c.lanes} MAC lanes, {c.requant_units} requant unit(s), "
                 f"{c.primitives} primitives; {len(self.passes)} passes, "
                 f"{self.macs_per_image} MACs/image"]
        lines.append(f"{'pass':>4}  {'layers':<10}{'ops':<30}{'map in':>11}{'map out':>11}"
                     f"{'cin>cout':>10}{'groups':>7}  fused")
        for k, (p, lays) in enumerate(zip(self.passes, self.layers)):
            ops = "+".join(self.layer_ops[k]) if self.layer_ops else "conv1x1"
            if p["stride"] != 1:
                ops += f" s{p['stride']}"
            fused = ",".join(n for n in ("pool", "gap", "raw") if p[n]) or "-"
            map_in = f"{p['h']}x{p['w']}x{p['in_c']}"
            map_out = f"{p['out_h']}x{p['out_w']}x{p['cout']}"
            if p["op"] == OP_ECA:
                chans, grp = f"k={p['cin']}", "-"     # an attention pass: its taps
            elif p["op"] == OP_SAM:
                chans, grp = "-", "-"
            else:
                chans, grp = f"{p['cin']}>{p['cout']}", p["groups"]
            lines.append(f"{k:>4}  {','.join(map(str, lays)):<10}{ops:<30}{map_in:>11}"
                         f"{map_out:>11}{chans:>10}{grp:>7}  {fused}")
        used = self.memories_used()
        lines.append("memories used: " + ", ".join(f"{k} {u}/{cap}" for k, (u, cap)
                                                   in used.items()))
        line = f"{self.resource_line()}; {overlay_cost(c).memory_bits} memory bits"
        try:
            cycles = self.cycles_per_image()
        except NotImplementedError:
            cycles = None
        if cycles:
            ideal = self.macs_per_image / max(1, c.lanes + c.requant_units)
            line += (f"; {cycles} cycles/image (ideal {ideal:.0f}, MAC efficiency "
                     f"{self.macs_per_image / ((c.lanes + c.requant_units) * cycles):.1%})")
        lines.append(line)
        return lines


def store_capacity(config):
    """Weight rows, gather entries and channel-table entries the network may have in all:
    the tables' sizes, or with a weight store the store's half and quarters (the tables are
    then caches of a group's or a pass's entries)."""
    if config.weight_store:
        return (config.weight_store // 2, config.weight_store // 4, config.weight_store // 4)
    return config.weight_rows, config.gather_rows, config.channel_rows


def _fm_capacity(config):
    """Words of a bank a feature map may use, and how a message names that bound: the whole
    bank, or with a weight store the addresses below it."""
    if config.weight_store:
        cap = config.fm_words - config.weight_store
        return cap, (f"the {cap} words below the weight store (fm_words {config.fm_words} - "
                     f"weight_store {config.weight_store})")
    return config.fm_words, f"fm_words = {config.fm_words}"


def _map_words(h, w, c):
    """Words per bank of an H×W×C map (channels padded to even, half in each bank)."""
    return h * w * (c + (c & 1)) // 2


# --- compiler ----------------------------------------------------------------------------------

_V1_OPS = ("replicate", "shift", "conv1x1", "maxpool2", "gap")


def _where(i, layer):
    return f"layer {i} ({layer.op})"


def compile_overlay(model, config=None):
    """Compile ``model`` into the overlay engine's program and memory images.

    Parameters
    ----------
    model : models.artifact.Model
    config : OverlayConfig or dict, optional
        Default :class:`OverlayConfig()`.

    Returns
    -------
    OverlayPlan

    Raises
    ------
    OverlayFitError
        A version-2 op, an unsupported layer pattern, a map over ``fm_words``, a table over
        its capacity, a shift out of the gather's range, or a partial sum over int32; the
        message names the layer or the memory and what to do.
    """
    config = OverlayConfig() if config is None else OverlayConfig.from_json(config)
    lanes = config.lanes
    layers = list(model.layers)
    shapes = model.shapes()
    value_bits = model.value_bits()
    last = len(layers) - 1

    if model.input_bits > 8:
        raise OverlayFitError(f"input: {model.input_bits}-bit pixels; the overlay's feature-map "
                              f"banks hold 8-bit values; use --engine dataflow")
    for i, layer in enumerate(layers):
        if layer.op in ATTENTION_OPS and layer.op not in config.attention:
            raise OverlayFitError(
                f"{_where(i, layer)}: the overlay engine runs version-1 ops only; this config "
                f"has no {layer.op} hardware: set \"attention\": "
                f"{json.dumps(list(config.attention) + [layer.op])} in the overlay config "
                f"(--overlay-config, OverlayConfig.attention), or use --engine dataflow")
        if layer.op not in _V1_OPS and layer.op not in ATTENTION_OPS:
            raise OverlayFitError(f"{_where(i, layer)}: the overlay engine runs version-1 ops "
                                  f"and {', '.join(ATTENTION_OPS)} only; use --engine dataflow")

    # Group the layers into passes: [replicate] [shift] conv1x1 [maxpool2] [gap].
    groups = []     # per pass: layer index of its replicate, shift, conv, pool, gap (or None)
    pending = {}    # replicate / shift layers waiting for their conv
    for i, layer in enumerate(layers):
        op = layer.op
        prev = layers[i - 1].op if i else None
        cur = groups[-1] if groups else None
        if op == "replicate":
            if pending:
                why = ("a second replicate" if "replicate" in pending else
                       "a replicate after a shift (the pattern is [replicate] [shift] conv1x1)")
                raise OverlayFitError(f"{_where(i, layer)}: {why} is not supported by the "
                                      f"overlay engine; use --engine dataflow")
            pending["replicate"] = i
        elif op == "shift":
            if "shift" in pending:
                raise OverlayFitError(f"{_where(i, layer)}: two shifts before one conv1x1 are "
                                      f"not supported by the overlay engine (merge them in the "
                                      f"model); use --engine dataflow")
            pending["shift"] = i
        elif op in ("conv1x1", "dynamic_conv1x1"):
            groups.append({"rep": pending.get("replicate"), "shift": pending.get("shift"),
                           "conv": i, "pool": None, "gap": None, "att": None})
            pending = {}
        elif op in ATTENTION_OPS:       # channel_attention, spatial_attention
            # An attention pass of its own, on the map the previous pass wrote (whole maps
            # in RAM: the pool, the per-channel step and the scale are passes over it).
            if pending or cur is None or cur["gap"] is not None:
                what = ("a replicate/shift (the overlay runs those as the gather of the "
                        "conv1x1 after them)" if pending else
                        "the image" if cur is None else "a gap")
                raise OverlayFitError(f"{_where(i, layer)}: the overlay runs {op} on a map a "
                                      f"conv1x1 (or another attention pass) wrote, here it "
                                      f"follows {what}; use --engine dataflow")
            groups.append({"rep": None, "shift": None, "conv": None, "pool": None,
                           "gap": None, "att": i})
        elif op == "maxpool2":
            if prev not in ("conv1x1", "dynamic_conv1x1"):
                what = prev if prev is not None else "the image"
                raise OverlayFitError(f"{_where(i, layer)}: the overlay fuses a maxpool2 into "
                                      f"the conv1x1 directly before it, here it follows "
                                      f"{what}; use --engine dataflow")
            cur["pool"] = i
        elif op == "gap":
            if prev not in ("conv1x1", "maxpool2") + ATTENTION_OPS or cur is None or pending \
                    or cur["gap"] is not None:
                what = prev if prev is not None else "the image"
                raise OverlayFitError(f"{_where(i, layer)}: the overlay fuses a gap into the "
                                      f"conv1x1 (and maxpool2) directly before it, here it "
                                      f"follows {what}; use --engine dataflow")
            if i + 1 != last:
                nxt = layers[i + 1].op if i + 1 <= last else "nothing"
                raise OverlayFitError(f"{_where(i, layer)}: a gap must be directly followed by "
                                      f"the classifier (the last conv1x1), here by layer "
                                      f"{i + 1} ({nxt}); use --engine dataflow")
            cur["gap"] = i
    if pending or not groups or groups[-1]["conv"] != last:
        i = min(pending.values()) if pending else last
        raise OverlayFitError(f"{_where(i, layers[i])}: not followed by a conv1x1, the overlay "
                              f"runs every replicate/shift as the gather of a conv1x1; use "
                              f"--engine dataflow")
    if groups[0]["conv"] is None:
        i = groups[0]["att"]
        raise OverlayFitError(f"{_where(i, layers[i])}: the first pass must be a conv1x1 (the "
                              f"image is loaded for it); use --engine dataflow")
    if len(groups) + 1 > config.max_passes:
        raise OverlayFitError(f"program: {len(groups)} passes + the END row need "
                              f"{len(groups) + 1} program rows, over max_passes = "
                              f"{config.max_passes}; raise max_passes or use --engine dataflow")

    passes, pass_layers, pass_ops = [], [], []
    w_rows, c_rows, g_rows = [], [], []
    wbase = cbase = gbase = 0
    qmax_act = (1 << model.act_bits) - 1
    # The image must fit a bank too.
    h0, w0, c0 = shapes[0]
    # (with a weight store, the maps keep the banks' addresses below it)
    fm_cap, fm_name = _fm_capacity(config)
    if _map_words(h0, w0, c0) > fm_cap:
        raise OverlayFitError(f"input: the image {h0}x{w0}x{c0} needs {h0}*{w0}*{c0 + (c0 & 1)}/2"
                              f" = {_map_words(h0, w0, c0)} words per bank, over {fm_name}; "
                              f"raise fm_words or use --engine dataflow")
    a_rows = []
    for k, g in enumerate(groups):
        if g["att"] is not None:
            passes.append(_attention_pass(k, g, layers, shapes, config, a_rows, qmax_act))
            idx = tuple(x for x in (g["att"], g["gap"]) if x is not None)
            pass_layers.append(idx)
            pass_ops.append(tuple(layers[x].op for x in idx))
            continue
        first = g["rep"] if g["rep"] is not None else (g["shift"] if g["shift"] is not None
                                                      else g["conv"])
        h, w, c_src = shapes[first]
        conv = layers[g["conv"]]
        dyn = conv.op == "dynamic_conv1x1"
        s = int(conv.stride)
        cin, cout = conv.cin, conv.cout
        cp2 = (c_src + (c_src & 1)) // 2
        ho, wo = -(-h // s), -(-w // s)
        ngroups = -(-cout // lanes)
        raw = g["conv"] == last
        pool, gap = g["pool"] is not None, g["gap"] is not None
        out_h, out_w = (ho // 2, wo // 2) if pool else (ho, wo)
        if gap:
            out_h = out_w = 1
        if not raw and _map_words(out_h, out_w, cout) > fm_cap:
            j = max(x for x in (g["conv"], g["pool"], g["gap"]) if x is not None)
            raise OverlayFitError(
                f"{_where(j, layers[j])}: the map it writes, {out_h}x{out_w}x{cout}, needs "
                f"{out_h}*{out_w}*{cout + (cout & 1)}/2 = {_map_words(out_h, out_w, cout)} words "
                f"per bank, over {fm_name}; raise fm_words, add a stride or "
                f"a maxpool earlier, or use --engine dataflow")

        # Partial sums: sum |w| * (largest input value) must fit the 32-bit accumulator.
        bits = value_bits[g["conv"]]
        # (a dynamic conv's mixed weights lie between its kernels' smallest and largest)
        wabs = (np.abs(conv.weight.astype(np.int64)).max(axis=0) if dyn else
                np.abs(conv.weight.astype(np.int64))).sum(axis=1)
        worst = int(wabs.max()) * ((1 << bits) - 1) if wabs.size else 0
        if worst > INT32_MAX:
            o = int(wabs.argmax())
            raise OverlayFitError(
                f"{_where(g['conv'], conv)}: output channel {o} has partial sums up to "
                f"sum|w| * (2**{bits} - 1) = {int(wabs[o])} * {(1 << bits) - 1} = {worst}, over "
                f"the overlay's int32 accumulator ({INT32_MAX}); use smaller weights or "
                f"--engine dataflow")
        summed = (ho // 2) * (wo // 2) if pool else ho * wo
        if gap and summed * qmax_act > INT32_MAX:
            raise OverlayFitError(f"{_where(g['gap'], layers[g['gap']])}: the gap sums "
                                  f"{summed} values of up to {qmax_act}, over int32; use "
                                  f"--engine dataflow")

        # Gather table: replicate folds in as s_i = i % C_src, the shift gives (dy, dx).
        shifts = (np.asarray(layers[g["shift"]].shifts, np.int64) if g["shift"] is not None
                  else np.zeros((cin, 2), np.int64))
        for i in range(cin):
            dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
            if not (-8 <= dy < 8 and -8 <= dx < 8):
                raise OverlayFitError(f"{_where(g['shift'], layers[g['shift']])}: channel {i} "
                                      f"shifts by (dy, dx) = ({dy}, {dx}), outside the gather "
                                      f"table's signed 4-bit range [-8, 7]; use --engine "
                                      f"dataflow")
            si = i % c_src
            off = (dy * w + dx) * cp2 + (si >> 1)
            if not -(1 << 19) <= off < (1 << 19):
                raise OverlayFitError(f"{_where(g['shift'], layers[g['shift']])}: channel {i}'s "
                                      f"address offset {off} does not fit the gather table's "
                                      f"signed 20 bits; use --engine dataflow")
            g_rows.append(gather_data(si & 1, off, dy, dx))

        # Weights: w[o, i] at row wbase + (o // P) * cin + i, lane o % P.
        wt = np.zeros((ngroups * cin, lanes), np.int64)
        o = np.arange(cout)
        if not dyn:     # a dynamic conv's rows are written by its DYN pass, per image
            wt[(o // lanes)[:, None] * cin + np.arange(cin)[None, :], (o % lanes)[:, None]] = \
                conv.weight.astype(np.int64)
        w_rows.append(wt)

        # Channel tables: bias, m, sh, qmax (the classifier: bias only).
        for o in range(cout):
            b = 0 if dyn else int(conv.bias[o])        # dynamic: written per image
            if raw:
                c_rows.append((b, 0, 0, 0))
            else:
                c_rows.append((b, int(conv.m[o]), int(conv.sh[o]), qmax_act))

        gl = layers[g["gap"]] if gap else None
        gap_ent = 0
        if gap:
            # The fused gap's requant constants (bias 0, m, sh, qmax) are two channel-table
            # entries at an even index (one per parity bank of a 2-unit engine): the engine
            # reads them through the table port like a conv channel's, no registers of their
            # own.
            if len(c_rows) % 2:
                c_rows.append((0, 0, 0, 0))
            gap_ent = len(c_rows)
            c_rows += [(0, int(gl.m), int(gl.sh), qmax_act)] * 2
        p = {"op": OP_CONV, "src": k % 2, "dst": 1 - k % 2, "h": h, "w": w, "stride": s,
             "ho": ho, "wo": wo, "cin": cin, "cout": cout, "groups": ngroups,
             "last_group": cout - (ngroups - 1) * lanes, "gbase": gbase, "wbase": wbase,
             "cbase": cbase, "src_row": s * w * cp2, "src_col": s * cp2, "pool": int(pool),
             "gap": int(gap), "gap_ent": gap_ent, "raw": int(raw), "out_h": out_h,
             "out_w": out_w, "dst_cp2": (cout + (cout & 1)) // 2, "in_c": c_src}
        if dyn:
            passes.append(_dynamic_pass(k, g, layers, config, a_rows, qmax_act, p, c_src))
            pass_layers.append((g["conv"],))
            pass_ops.append(("dynamic_conv1x1 (attention)",))
        passes.append(p)
        idx = tuple(x for x in (g["rep"], g["shift"], g["conv"], g["pool"], g["gap"])
                    if x is not None)
        pass_layers.append(idx)
        pass_ops.append(tuple(layers[x].op for x in idx))
        wbase += ngroups * cin
        cbase = len(c_rows)
        gbase += cin
        for key, n, what in (("weight_rows", cin, "weight rows (its input channels)"),
                             ("gather_rows", cin, "gather entries"),
                             ("channel_rows", cout + 3, "channel-table entries copied (cout "
                              "+ 3: a pad and a gap's two)")) if config.weight_store else ():
            # a group's rows (a pass's gather and channel entries) are copied into the weight
            # cache (the gather and channel tables) before it runs
            if n > getattr(config, key):
                raise OverlayFitError(
                    f"{_where(g['conv'], conv)}: this conv (pass {k}) has {n} {what}, over "
                    f"the copy's table, {key} = {getattr(config, key)}; raise {key} or use "
                    f"--engine dataflow")
        wcap, gcap, ccap = store_capacity(config)
        for need, key, what, cap in ((wbase, "weight_rows", "weight rows", wcap),
                                     (cbase, "channel_rows", "channel-table entries", ccap),
                                     (gbase, "gather_rows", "gather-table entries", gcap)):
            if config.weight_store:
                key = "weight_store // 2" if key == "weight_rows" else "weight_store // 4"
            if need > cap:
                raise OverlayFitError(
                    f"{_where(g['conv'], conv)}: the network needs {need} {what} up to this "
                    f"conv (pass {k}), over {key} = {cap}; raise {key} or use --engine "
                    f"dataflow")

    program = np.zeros((len(passes) + 1, len(PASS_FIELDS)), np.int64)
    for k, p in enumerate(passes):
        program[k] = [p[f] for f in PASS_FIELDS]
    program[len(passes), _FIELD["op"]] = OP_END
    chan = np.array(c_rows, np.int64).reshape(-1, 4)
    return OverlayPlan(config=config, program=program,
                       weights=np.concatenate(w_rows).astype(np.int64),
                       bias=chan[:, 0].copy(), m=chan[:, 1].copy(), sh=chan[:, 2].copy(),
                       qmax=chan[:, 3].copy(), gather=np.array(g_rows, np.int64),
                       att=np.array(a_rows, np.int64),
                       passes=tuple(passes), layers=tuple(pass_layers),
                       macs_per_image=int(model.macs_per_image()), model_name=model.name,
                       classes=len(model.classes), layer_ops=tuple(pass_ops))


def _attention_pass(k, g, layers, shapes, config, a_rows, qmax_act):
    """The program row of a channel_attention (op ECA) or spatial_attention (op SAM) pass
    and its attention-table entries (appended to ``a_rows``, layout :data:`ECA_HEAD`,
    :data:`SAM_HEAD`).

    The row's fields: ``h``, ``w``, ``in_c`` = ``cout`` = C, ``dst_cp2`` (the map's words
    per pixel, in and out), ``cin`` = k (ECA's kernel taps) or C (SAM), ``cbase`` = the
    table base, ``gap`` (a fused gap: the output is the 1×1 map of the scaled map's gap),
    ``out_h``, ``out_w``.
    """
    i = g["att"]
    layer = layers[i]
    h, w, c = shapes[i]
    sam = layer.op == "spatial_attention"
    taps = c if sam else len(layer.kernel)
    base = len(a_rows)
    need = base + (SAM_HEAD + 256 + c + c * c if sam else ECA_HEAD + taps + 256)
    if need > config.attention_rows:
        raise OverlayFitError(f"{_where(i, layer)}: the network needs {need} attention-table "
                              f"entries up to this layer (pass {k}), over attention_rows = "
                              f"{config.attention_rows}; raise attention_rows or use --engine "
                              f"dataflow")
    if c > config.channel_rows:
        raise OverlayFitError(f"{_where(i, layer)}: {c} channels, over the attention's "
                              f"per-channel memories (channel_rows = {config.channel_rows}); "
                              f"raise channel_rows or use --engine dataflow")
    if h * w * ((1 << 8) - 1) > INT32_MAX:
        raise OverlayFitError(f"{_where(i, layer)}: the pool sums {h * w} values, over int32; "
                              f"use --engine dataflow")
    gap = g["gap"] is not None
    gl = layers[g["gap"]] if gap else None
    if gap and h * w * qmax_act > INT32_MAX:
        raise OverlayFitError(f"{_where(g['gap'], gl)}: the gap sums {h * w} values of up to "
                              f"{qmax_act}, over int32; use --engine dataflow")
    a_rows += [int(layer.bias) & 0xFFFFFFFF,
               int(layer.pool_m) | int(layer.pool_sh) << 16 | qmax_act << 24,
               int(layer.z_m) | int(layer.z_sh) << 16,
               (int(gl.m) | int(gl.sh) << 16) if gap else 0]
    if sam:
        a_rows.append(int(layer.ctx_m) | int(layer.ctx_sh) << 16)
        a_rows += [int(v) for v in np.asarray(layer.lut, np.int64).tolist()]
        a_rows += [int(v) & 0xFFFFFFFF for v in np.asarray(layer.ctx_bias, np.int64).tolist()]
        a_rows += [int(v) & 0xFFFFFFFF
                   for v in np.asarray(layer.ctx_weight, np.int64).reshape(-1).tolist()]
    else:
        a_rows += [int(t) & 0xFFFFFFFF for t in np.asarray(layer.kernel, np.int64).tolist()]
        a_rows += [int(v) for v in np.asarray(layer.lut, np.int64).tolist()]
    cp2 = (c + (c & 1)) // 2
    p = {name: 0 for name in PASS_FIELDS}
    p.update({"op": OP_SAM if sam else OP_ECA, "src": k % 2, "dst": 1 - k % 2, "h": h,
              "w": w, "stride": 1, "ho": h, "wo": w, "cin": taps, "cout": c, "cbase": base, "gap": int(gap),
              "out_h": 1 if gap else h, "out_w": 1 if gap else w, "dst_cp2": cp2, "in_c": c})
    if _map_words(p["out_h"], p["out_w"], c) > config.fm_words:
        raise OverlayFitError(f"{_where(i, layer)}: the map {h}x{w}x{c} needs "
                              f"{_map_words(h, w, c)} words per bank, over fm_words = "
                              f"{config.fm_words}; raise fm_words or use --engine dataflow")
    return p


def _dynamic_pass(k, g, layers, config, a_rows, qmax_act, conv_row, c_src):
    """The program row of a dynamic_conv1x1's attention pass (op DYN), run before its conv
    pass ``conv_row``, and its attention-table entries (layout :data:`DYN_HEAD`).

    The pass reads the conv's source map through the conv's gather entries (the shift and
    replicate before it), computes the kernel attention and writes the mixed weights and
    biases into the conv's weight rows and channel-table entries. Its row: the conv's
    ``src``, ``h``, ``w``, ``in_c``, ``cin``, ``cout``, ``groups``, ``last_group``,
    ``gbase``, ``wbase``, ``cbase``, ``raw``; ``dst_cp2`` = the source map's words per
    pixel; ``gap_ent`` = its attention-table base.
    """
    i = g["conv"]
    layer = layers[i]
    kn, cout, cin = (int(v) for v in layer.weight.shape)
    lanes = config.lanes
    t = int(layer.att_step)
    if kn > 8:
        raise OverlayFitError(f"{_where(i, layer)}: {kn} kernels, over the overlay attention "
                              f"unit's 8; use --engine dataflow")
    if t > 255:
        raise OverlayFitError(f"{_where(i, layer)}: att_step {t} over 255; use --engine "
                              f"dataflow")
    if cin > config.channel_rows:
        raise OverlayFitError(f"{_where(i, layer)}: {cin} input channels, over the attention's "
                              f"per-channel memory (channel_rows = {config.channel_rows}); "
                              f"raise channel_rows or use --engine dataflow")
    base = len(a_rows)
    need = base + DYN_HEAD + 256 + kn + kn * cin + kn * cout * cin + kn * cout
    if need > config.attention_rows:
        raise OverlayFitError(f"{_where(i, layer)}: the network needs {need} attention-table "
                              f"entries up to this layer (pass {k}), over attention_rows = "
                              f"{config.attention_rows}; raise attention_rows or use --engine "
                              f"dataflow")
    if conv_row["h"] * conv_row["w"] * 255 > INT32_MAX:
        raise OverlayFitError(f"{_where(i, layer)}: the attention pool sums over int32; use "
                              f"--engine dataflow")
    a_rows += [int(layer.att_pool_m) | int(layer.att_pool_sh) << 16 | qmax_act << 24,
               int(layer.att_m) | int(layer.att_sh) << 16, kn | t << 8]
    a_rows += [int(v) for v in np.asarray(layer.exp_lut, np.int64).tolist()]
    a_rows += [int(v) & 0xFFFFFFFF for v in np.asarray(layer.att_bias, np.int64).tolist()]
    a_rows += [int(v) & 0xFFFFFFFF
               for v in np.asarray(layer.att_weight, np.int64).reshape(-1).tolist()]
    wt = np.asarray(layer.weight, np.int64)
    for grp in range(-(-cout // lanes)):
        for ci in range(cin):
            for o in range(grp * lanes, min(cout, (grp + 1) * lanes)):
                a_rows += [int(v) & 0xFFFFFFFF for v in wt[:, o, ci].tolist()]
    bs = np.asarray(layer.bias, np.int64)
    for o in range(cout):
        a_rows += [int(v) & 0xFFFFFFFF for v in bs[:, o].tolist()]
    p = {name: 0 for name in PASS_FIELDS}
    for name in ("src", "h", "w", "in_c", "cin", "cout", "groups", "last_group", "gbase",
                 "wbase", "cbase", "raw"):
        p[name] = conv_row[name]
    p.update({"op": OP_DYN, "dst": 1 - conv_row["src"], "stride": 1, "ho": conv_row["h"],
              "wo": conv_row["w"], "out_h": conv_row["h"], "out_w": conv_row["w"],
              "dst_cp2": (c_src + (c_src & 1)) // 2, "gap_ent": base})
    return p


# --- parameter words -> memories ---------------------------------------------------------------

def _word_fields():
    """(offset, mask) of the layer, kind, row, lane and data fields of a parameter word."""
    return tuple((PARAM_LAYOUT[name].offset, (1 << PARAM_LAYOUT[name].width) - 1)
                 for name in ("layer", "kind", "row", "lane", "data"))


def _packer():
    """``pack(kind, row, lane, value)``: :func:`hw.params.encode_word` with ``layer`` =
    OVERLAY_LAYER, by the layout's field offsets (same bits, tested; a plan has ~10^4 words)."""
    (lo, _), (ko, _), (ro, _), (no, _), (do, _) = _word_fields()
    head = OVERLAY_LAYER << lo

    def pack(kind, row, lane, value):
        if not (0 <= row < 65536 and 0 <= lane < 65536 and -(1 << 31) <= value < (1 << 32)):
            return encode_word(OVERLAY_LAYER, kind, row, lane, value)  # raises in its words
        return (head | kind.value << ko | row << ro | lane << no
                | (value & 0xFFFFFFFF) << do)
    return pack


def _sext32(v):
    return v - (1 << 32) if v >> 31 else v


def decode_param_words(words, config, memories=None):
    """Rebuild the overlay's memory images from its parameter words (what the engine does).

    Parameters
    ----------
    words : iterable of int
        Encoded beats (:func:`hw.params.encode_word`), ``layer`` = 0xFF.
    config : OverlayConfig or dict
    memories : OverlayMemories, optional
        Memories to write into (as a device keeps its RAM between loads); default: fresh
        zeroed memories of the config's sizes.

    Returns
    -------
    OverlayMemories
        Arrays of the config's full sizes (``program`` ``[max_passes, len(PASS_FIELDS)]``,
        ``weights`` ``[weight_rows, lanes]``, tables ``[channel_rows]``, ``[gather_rows]``; with a
        weight store ``weight_store // 2`` weight rows, ``weight_store // 4`` gather and
        channel entries).

    Raises
    ------
    ValueError
        A word for another layer, of a kind the overlay has no memory for, or past a memory.
    """
    c = OverlayConfig.from_json(config)
    if memories is None:
        z = np.zeros
        wcap, gcap, ccap = store_capacity(c)
        memories = OverlayMemories(c, z((c.max_passes, len(PASS_FIELDS)), np.int64),
                                   z((wcap, c.lanes), np.int64),
                                   z(ccap, np.int64), z(ccap, np.int64),
                                   z(ccap, np.int64), z(ccap, np.int64),
                                   z(gcap, np.int64),
                                   z(c.attention_rows if c.attention else 0, np.int64))
    tables = {ParamKind.BIAS: memories.bias, ParamKind.M: memories.m, ParamKind.SH: memories.sh,
              ParamKind.QMAX: memories.qmax, ParamKind.GATHER: memories.gather}
    if c.attention:
        # The attention table (only an engine with attention hardware has it).
        tables[ParamKind.LUT] = memories.att
    # The fields by their offsets in PARAM_LAYOUT (decode_word's own layout), without building
    # a layout view per word: a device model loads ~10^4 words per model.
    (lo, lm), (ko, km), (ro, rm), (no, nm), (do, dm) = _word_fields()
    kinds = {k.value: k for k in ParamKind}
    for word in words:
        word = int(word)
        layer, kv = (word >> lo) & lm, (word >> ko) & km
        row, lane, value = (word >> ro) & rm, (word >> no) & nm, (word >> do) & dm
        if layer != OVERLAY_LAYER:
            raise ValueError(f"overlay parameter word {word:#x}: layer {layer}, the overlay "
                             f"takes layer {OVERLAY_LAYER:#x} only")
        kind = kinds.get(kv)
        if kind == ParamKind.PROGRAM:
            mem, signed = memories.program, False
        elif kind == ParamKind.WEIGHT:
            mem, signed = memories.weights, True
        elif kind in tables:
            mem, signed = tables[kind], kind == ParamKind.BIAS
            if lane != 0:
                raise ValueError(f"overlay parameter word {word:#x}: {kind.name} lane {lane}, "
                                 f"the table has lane 0 only")
        else:
            name = kind.name if kind is not None else f"{kv} (not a ParamKind)"
            raise ValueError(f"overlay parameter word {word:#x}: kind {name} has no "
                             f"overlay memory")
        shape = mem.shape
        if row >= shape[0] or (mem.ndim == 2 and lane >= shape[1]):
            raise ValueError(f"overlay parameter word {word:#x}: {kind.name} row {row} lane "
                             f"{lane} is past the memory ({'x'.join(map(str, shape))})")
        v = _sext32(value) if signed else value
        if mem.ndim == 2:
            mem[row, lane] = v
        else:
            mem[row] = v
    return memories


# --- executor ----------------------------------------------------------------------------------

def _decode_gather(entries):
    """(bank, off, dy, dx) int64 arrays of packed gather entries (GATHER_DATA)."""
    e = np.asarray(entries, np.int64)
    bank = e & 1
    off = (e >> 1) & 0xFFFFF
    off = np.where(off >> 19, off - (1 << 20), off)
    dy = (e >> 21) & 0xF
    dy = np.where(dy >> 3, dy - 16, dy)
    dx = (e >> 25) & 0xF
    dx = np.where(dx >> 3, dx - 16, dx)
    return bank, off, dy, dx


def _requant(v, m, sh, qmax):
    """Spec §4 requant: ``clamp((v*m + (1 << (sh-1))) >> sh, 0, qmax)``, floor shift."""
    sh = np.asarray(sh, np.int64)
    rnd = np.where(sh > 0, np.left_shift(1, np.maximum(sh - 1, 0)), 0)
    return np.clip((v * np.asarray(m, np.int64) + rnd) >> sh, 0, np.asarray(qmax, np.int64))


def _positions(p):
    """The conv output positions a pass computes, in the engine's order: raster, or window
    order with a fused maxpool (only positions inside pooled windows)."""
    ho, wo = p["ho"], p["wo"]
    if p["pool"]:
        py, px, q = np.meshgrid(np.arange(ho // 2), np.arange(wo // 2), np.arange(4),
                                indexing="ij")
        return (2 * py + q // 2).reshape(-1), (2 * px + q % 2).reshape(-1)
    y, x = np.meshgrid(np.arange(ho), np.arange(wo), indexing="ij")
    return y.reshape(-1), x.reshape(-1)


def _run_chunk(mem, images, max_steps):
    """Execute the program on one chunk of images ``[N, H, W, C]``; returns int64 logits and
    each pass's output as read back from its destination banks (the logits for the raw
    pass)."""
    c = mem.config
    prog = np.asarray(mem.program, np.int64)
    n = len(images)
    depth = c.fm_words
    # Two buffers (X, Y) of two parity banks each; a buffer is [N, bank * depth + address].
    fm = np.zeros((2, n, 2 * depth), np.uint8)
    row0 = dict(zip(PASS_FIELDS, prog[0].tolist()))
    if row0["op"] != OP_CONV:
        raise ValueError("overlay program: pass 0 is END, nothing to run")
    h, w, cc = row0["h"], row0["w"], row0["in_c"]
    if images.shape[1:] != (h, w, cc):
        raise ValueError(f"images have shape {list(images.shape)}, the program's pass 0 "
                         f"reads [N, {h}, {w}, {cc}]")
    # LOAD: the image into pass 0's source buffer (X), channels in parity banks.
    _write_map(fm[row0["src"]], images, (cc + (cc & 1)) // 2, depth)
    logits, taps, mixed = None, [], None
    for k in range(min(len(prog), max_steps)):
        p = dict(zip(PASS_FIELDS, prog[k].tolist()))
        if p["op"] == OP_END:
            break
        if p["op"] in (OP_ECA, OP_SAM) and c.attention:
            out = (_run_eca if p["op"] == OP_ECA else _run_sam)(mem, p, fm, n, depth)
            taps.append(out)
            continue
        if p["op"] == OP_DYN and c.attention:
            # the mixed weights and biases of the next (conv) pass, per image
            mixed = _run_dyn(mem, p, fm, n, depth)
            continue
        if p["op"] != OP_CONV:
            raise ValueError(f"overlay program row {k}: op {p['op']} is neither CONV (1) nor "
                             f"END (0)" + (" nor ECA (2), SAM (3), DYN (4)" if c.attention else ""))
        src = fm[p["src"]]
        s, cin, cout, lanes = p["stride"], p["cin"], p["cout"], c.lanes
        # Gather: every conv input channel's bank, offset and shift.
        bank, off, dy, dx = _decode_gather(np.asarray(mem.gather)[p["gbase"]:p["gbase"] + cin])
        ys, xs = _positions(p)
        sy = s * ys[:, None] + dy[None, :]
        sx = s * xs[:, None] + dx[None, :]
        inside = (sy >= 0) & (sy < p["h"]) & (sx >= 0) & (sx < p["w"])
        # Address arithmetic as the engine's incremental pixbase: y*src_row + x*src_col + off.
        addr = (ys * p["src_row"] + xs * p["src_col"])[:, None] + off[None, :]
        if (inside & ((addr < 0) | (addr >= depth))).any():
            raise ValueError(f"overlay program row {k}: a read inside the map addresses past "
                             f"the bank (0..{depth - 1})")
        flat = np.where(inside, bank[None, :] * depth + addr, 0)
        x = np.where(inside[None], src[:, flat], 0)            # [N, positions, cin]
        # Weights of the pass: w[o, i] at row wbase + (o // P) * cin + i, lane o % P.
        o = np.arange(cout)
        wrows = p["wbase"] + (o // lanes)[:, None] * cin + np.arange(cin)[None, :]
        wmat = np.asarray(mem.weights, np.int64)[wrows, (o % lanes)[:, None]]  # [cout, cin]
        # Exact in float64: |partial sums| <= cin * 255 * 128, far below 2**53.
        ch = slice(p["cbase"], p["cbase"] + cout)
        bias = np.asarray(mem.bias, np.int64)[ch]
        if mixed is not None:
            # after a DYN pass: this image's mixed weights and biases
            wmix, bmix = mixed
            acc = np.einsum("npi,noi->npo", x.astype(np.int64), wmix)
            bias = bmix[:, None, :]
            mixed = None
        else:
            acc = np.rint(x.astype(np.float64) @ wmat.T.astype(np.float64)).astype(np.int64)
        if p["raw"]:
            logits = (acc + bias).reshape(n, -1)
            taps.append(logits)
            continue
        q = _requant(acc + bias, np.asarray(mem.m)[ch], np.asarray(mem.sh)[ch],
                     np.asarray(mem.qmax)[ch])
        oh, ow = p["ho"], p["wo"]
        if p["pool"]:
            # Window order: the running max over the 4 members of each window.
            oh, ow = oh // 2, ow // 2
            q = q.reshape(n, oh * ow, 4, cout).max(axis=2)
        if p["gap"]:
            sums = q.sum(axis=1)
            ge = p["gap_ent"]
            q = _requant(sums, int(mem.m[ge]), int(mem.sh[ge]), int(mem.qmax[ge]))[:, None, :]
            oh = ow = 1
        if (oh, ow) != (p["out_h"], p["out_w"]):
            raise ValueError(f"overlay program row {k}: out_h x out_w = {p['out_h']}x"
                             f"{p['out_w']}, the pass produces {oh}x{ow}")
        _write_map(fm[p["dst"]], q.reshape(n, oh, ow, cout), p["dst_cp2"], depth)
        taps.append(_read_map(fm[p["dst"]], oh, ow, cout, p["dst_cp2"], depth))
    if logits is None:
        raise ValueError("overlay program: no raw (classifier) pass before END")
    return logits, taps


def _rq(v, m, sh):
    """``(v * m + (1 << (sh - 1))) >> sh`` (floor), int64."""
    return (np.asarray(v, np.int64) * int(m) + (1 << (int(sh) - 1))) >> int(sh)


def _run_eca(mem, p, fm, n, depth):
    """A channel_attention pass (op ECA) over the memory images: the map from ``src``, the
    constants, taps and LUT from the attention table at ``cbase`` (:data:`ECA_HEAD`), the
    scaled map (or its fused gap) to ``dst``. Returns the output map ``[N, oh, ow, C]``."""
    h, w, cc, cp2 = p["h"], p["w"], p["in_c"], p["dst_cp2"]
    att = np.asarray(mem.att, np.int64)
    b, k = p["cbase"], p["cin"]
    x = _read_map(fm[p["src"]], h, w, cc, cp2, depth)
    bias = _sext32(int(att[b]))
    w1, w2, w3 = (int(v) for v in att[b + 1:b + 4])
    pool_m, pool_sh, qmax = w1 & 0xFFFF, (w1 >> 16) & 0x3F, (w1 >> 24) & 0xFF
    z_m, z_sh = w2 & 0xFFFF, (w2 >> 16) & 0x3F
    kern = att[b + ECA_HEAD:b + ECA_HEAD + k] & 0xFF
    kern = np.where(kern >> 7, kern - 256, kern)
    lut = att[b + ECA_HEAD + k:b + ECA_HEAD + k + 256] & 0x1FF
    pool = np.clip(_rq(x.sum(axis=(1, 2)), pool_m, pool_sh), 0, qmax)       # [N, C]
    half = (k - 1) // 2
    padded = np.pad(pool, ((0, 0), (half, k - 1 - half)))
    z = np.full_like(pool, bias)
    for j in range(k):
        z += int(kern[j]) * padded[:, j:j + cc]
    a = lut[np.clip(_rq(z, z_m, z_sh), -128, 127) + 128]
    out = (x * a[:, None, None, :] + 128) >> 8
    if p["gap"]:
        out = np.clip(_rq(out.sum(axis=(1, 2)), w3 & 0xFFFF, (w3 >> 16) & 0x3F), 0,
                      qmax)[:, None, None, :]
    if out.shape[1:3] != (p["out_h"], p["out_w"]):
        raise ValueError(f"overlay ECA pass: out_h x out_w = {p['out_h']}x{p['out_w']}, the "
                         f"pass produces {out.shape[1]}x{out.shape[2]}")
    _write_map(fm[p["dst"]], out, cp2, depth)
    return _read_map(fm[p["dst"]], out.shape[1], out.shape[2], cc, cp2, depth)


def _run_dyn(mem, p, fm, n, depth):
    """A dynamic_conv1x1's attention pass (op DYN) over the memory images: the pool of the
    conv's input (the source map through the conv's gather entries, every ``t``-th row and
    column), the kernel attention ``pi`` and the mixed weights and biases; returns
    ``(W [N, cout, cin], B [N, cout])`` for the conv pass that follows."""
    h, w, cc, cp2 = p["h"], p["w"], p["in_c"], p["dst_cp2"]
    cin, cout = p["cin"], p["cout"]
    att = np.asarray(mem.att, np.int64)
    b = p["gap_ent"]
    w0, w1, w2 = (int(v) for v in att[b:b + 3])
    qmax, kn, t = (w0 >> 24) & 0xFF, w2 & 0xFF, (w2 >> 8) & 0xFF
    e = b + DYN_HEAD
    lut = att[e:e + 256] & 0xFFFF
    abias = _sext(att[e + 256:e + 256 + kn], 32)
    aw_ = _sext(att[e + 256 + kn:e + 256 + kn + kn * cin], 8).reshape(kn, cin)
    e += 256 + kn + kn * cin
    x = _read_map(fm[p["src"]], h, w, cc, cp2, depth)
    bank, off, dy, dx = _decode_gather(np.asarray(mem.gather)[p["gbase"]:p["gbase"] + cin])
    src_c = 2 * (off - (dy * w + dx) * cp2) + bank
    yy, xx = np.meshgrid(np.arange(0, h, t), np.arange(0, w, t), indexing="ij")
    sums = np.zeros((n, cin), np.int64)
    for i in range(cin):
        sy, sx = yy + dy[i], xx + dx[i]
        ok = (sy >= 0) & (sy < h) & (sx >= 0) & (sx < w)
        sums[:, i] = x[:, np.clip(sy, 0, h - 1), np.clip(sx, 0, w - 1), src_c[i]][:, ok].sum(1)
    pool = np.clip(_rq(sums, w0 & 0xFFFF, (w0 >> 16) & 0x3F), 0, qmax)
    r = pool @ aw_.T + abias[None, :]
    d = r - r.max(axis=1, keepdims=True)
    ex = lut[np.clip(_rq(d, w1 & 0xFFFF, (w1 >> 16) & 0x3F), -255, 0) + 255]
    pi = (ex * 256) // ex.sum(axis=1, keepdims=True)                      # [N, K]
    lanes = mem.config.lanes
    wk = np.zeros((kn, cout, cin), np.int64)
    for grp in range(-(-cout // lanes)):
        for ci in range(cin):
            for o in range(grp * lanes, min(cout, (grp + 1) * lanes)):
                wk[:, o, ci] = _sext(att[e:e + kn], 8)
                e += kn
    bk = np.zeros((kn, cout), np.int64)
    for o in range(cout):
        bk[:, o] = _sext(att[e:e + kn], 32)
        e += kn
    wmix = (np.einsum("nk,koi->noi", pi, wk) + 128) >> 8
    bmix = (pi @ bk + 128) >> 8
    return wmix, bmix


def _sext(v, bits):
    v = np.asarray(v, np.int64) & ((1 << bits) - 1)
    return np.where(v >> (bits - 1), v - (1 << bits), v)


def _run_sam(mem, p, fm, n, depth):
    """A spatial_attention pass (op SAM) over the memory images (docs/format.md): the map
    from ``src``, the constants, LUT, ctx_bias and ctx_weight from the attention table at
    ``cbase`` (:data:`SAM_HEAD`), the scaled map (or its fused gap) to ``dst``."""
    h, w, cc, cp2 = p["h"], p["w"], p["in_c"], p["dst_cp2"]
    att = np.asarray(mem.att, np.int64)
    b = p["cbase"]
    x = _read_map(fm[p["src"]], h, w, cc, cp2, depth)
    bias = _sext32(int(att[b]))
    w1, w2, w3, w4 = (int(v) for v in att[b + 1:b + 5])
    qmax = (w1 >> 24) & 0xFF
    lut = att[b + SAM_HEAD:b + SAM_HEAD + 256] & 0x1FF
    cbias = _sext(att[b + SAM_HEAD + 256:b + SAM_HEAD + 256 + cc], 32)
    cw = _sext(att[b + SAM_HEAD + 256 + cc:b + SAM_HEAD + 256 + cc + cc * cc], 8)
    pool = np.clip(_rq(x.sum(axis=(1, 2)), w1 & 0xFFFF, (w1 >> 16) & 0x3F), 0, qmax)
    v = pool @ cw.reshape(cc, cc).T + cbias[None, :]
    u = np.clip(_rq(v, w4 & 0xFFFF, (w4 >> 16) & 0x3F), -128, 127)
    z = np.einsum("nhwc,nc->nhw", x, u) + bias
    s = lut[np.clip(_rq(z, w2 & 0xFFFF, (w2 >> 16) & 0x3F), -128, 127) + 128]
    out = (x * s[..., None] + 128) >> 8
    if p["gap"]:
        out = np.clip(_rq(out.sum(axis=(1, 2)), w3 & 0xFFFF, (w3 >> 16) & 0x3F), 0,
                      qmax)[:, None, None, :]
    _write_map(fm[p["dst"]], out, cp2, depth)
    return _read_map(fm[p["dst"]], out.shape[1], out.shape[2], cc, cp2, depth)


def _map_index(h, w, cc, cp2, depth):
    """Buffer index of every value (y, x, c) of an H×W×C map, raster then channel order."""
    pix = np.arange(h * w)[:, None] * cp2
    ch = np.arange(cc)[None, :]
    return ((ch & 1) * depth + pix + (ch >> 1)).reshape(-1)


def _read_map(buf, h, w, cc, cp2, depth):
    """The H×W×C map stored in a buffer's parity banks, int64 ``[N, H, W, C]``."""
    return buf[:, _map_index(h, w, cc, cp2, depth)].astype(np.int64).reshape(-1, h, w, cc)


def _write_map(buf, values, cp2, depth):
    """Store ``values [N, H, W, C]`` in a buffer's parity banks: (y, x, c) in bank ``c & 1``
    at ``(y*W + x) * cp2 + (c >> 1)``."""
    n, h, w, cc = values.shape
    idx = _map_index(h, w, cc, cp2, depth)
    if cc and ((h * w - 1) * cp2 + ((cc - 1) >> 1) >= depth or 2 * cp2 < cc):
        raise ValueError(f"overlay map {h}x{w}x{cc} with {cp2} words per pixel does not fit a "
                         f"bank of {depth}")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise ValueError("overlay map values outside the 8-bit banks")
    buf[:, idx] = values.reshape(n, -1)


def run_overlay(plan, images, chunk=64, taps=False):
    """Execute an overlay program on a batch of images (the engine's arithmetic, in NumPy).

    Reads only the program and the memory images (``plan.program``, ``weights``, ``bias``,
    ``m``, ``sh``, ``qmax``, ``gather``, ``config``): an :class:`OverlayPlan` or the
    :class:`OverlayMemories` from :func:`decode_param_words`.

    Parameters
    ----------
    plan : OverlayPlan or OverlayMemories
    images : ndarray [N, H, W, C] (or [N, H, W] for one channel)
        Unsigned pixels, at most 8 bits.
    chunk : int
        Images per step (bounds the memory of the four banks).
    taps : bool
        Also return every pass's output map, read back from its destination banks through
        the layout (``[N, out_h, out_w, cout]``; the raw pass: the logits), to trace a
        mismatch to the first pass that differs.

    Returns
    -------
    logits : ndarray of int64 [N, classes]
    outputs : list of ndarray, only when ``taps``
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C], got shape {list(images.shape)}")
    images = images.astype(np.int64)
    if images.size and (images.min() < 0 or images.max() > 255):
        raise ValueError("images must hold unsigned 8-bit pixels")
    max_steps = len(plan.program)
    if not len(images):
        prog = np.asarray(plan.program)
        k = next((r for r in range(len(prog)) if prog[r, _FIELD["raw"]]), None)
        classes = int(prog[k, _FIELD["cout"]]) if k is not None else 0
        empty = np.zeros((0, classes), np.int64)
        return (empty, []) if taps else empty
    parts = [_run_chunk(plan, images[s:s + chunk], max_steps)
             for s in range(0, len(images), chunk)]
    logits = np.concatenate([p[0] for p in parts])
    if not taps:
        return logits
    return logits, [np.concatenate([p[1][k] for p in parts]) for k in range(len(parts[0][1]))]
