"""The overlay engine on the iCEBreaker's iCE40 UP5K: fit (logic cells, EBR, DSP, SPRAM), Fmax
over nextpnr seeds, and MAC efficiency on the digits model (issue #10).

Usage::

    python benchmarks/bench_overlay_fit.py                    # seeds 1 2 3 (~3-8 min each)
    python benchmarks/bench_overlay_fit.py --seeds 1          # one place and route
    python benchmarks/bench_overlay_fit.py --no-pnr           # Yosys counts and the cycle model
    python benchmarks/bench_overlay_fit.py --json fit.json

The engine is the one ``shiftacc build out/digits.npz --board icebreaker --engine overlay``
builds (the config comes from ``sw/cli_build._overlay_plan`` with no overlay option given),
placed and routed *alone*, wrapped in the timing harness of ``benchmarks/bench_fmax.py``
(every input from a flip-flop of one scan chain, every output captured and XOR-folded into
one pin), its block RAM read ports under the build's collision rule (the COLLISION_FREE
memories' ports collision-undefined, ``hw.synth.undefined_collisions``, no read-first
emulation; ``--read-first`` gives the former Verilog route): Yosys ``synth_ice40 -dsp``,
then ``nextpnr-ice40 --up5k --package sg48 --freq 33`` (the native tools on PATH, else
``yowasp-*``). The harness's own flip-flops (one per engine
port bit plus the XOR tree) are counted from the netlist and subtracted from nextpnr's
``ICESTORM_LC`` to give the engine's logic cells ("LC engine"; each harness flip-flop takes one
cell of its own).

MAC efficiency (DESIGN.md §3) = MACs per image ÷ (multipliers instantiated × cycles per
image), cycles from the exact cycle model ``hw.overlay_timing.image_cycles`` (the engine's
tests check it against measured cycles); printed for every multiplier (MAC lanes and requant
halves) and for the MAC lanes alone, beside MARLANN's ~0.80 at 16 MAC/cycle.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_fmax import harness_verilog  # noqa: E402

from shiftacc.boards.registry import find_board  # noqa: E402
from shiftacc.hw.overlay import OverlayEngine  # noqa: E402
from shiftacc.models.artifact import load_artifact  # noqa: E402
from shiftacc.sw.cli_build import _overlay_plan  # noqa: E402

UP5K_LC = 5280


def tool(name):
    exe = shutil.which(name) or shutil.which(f"yowasp-{name}")
    if exe is None:
        raise SystemExit(f"{name} not found (native on PATH, or pip install yowasp-{name})")
    return exe


def up5k_plan(model_path):
    """The plan (config + program) the iCEBreaker build uses for ``model_path``."""
    model = load_artifact(model_path)
    args = SimpleNamespace(overlay_config=None, lanes=None, requant_units=None)
    return model, _overlay_plan(args, model, find_board("icebreaker"), lambda *_: None)


def efficiency(model, plan):
    cycles = plan.predicted_cycles_per_image
    macs = model.macs_per_image()
    lanes = plan.config.lanes
    return {"macs_per_image": macs, "cycles_per_image": cycles,
            "multipliers": plan.multipliers, "dsp_ice40": plan.dsp("ice40"),
            "mac_eff_all": macs / (plan.multipliers * cycles),
            "mac_eff_lanes": macs / (lanes * cycles)}


def harness_rtlil(block):
    """RTLIL of the harnessed block with the build's collision rule: the read ports of the
    COLLISION_FREE memories marked collision-undefined (``hw.synth.undefined_collisions``,
    as ``shiftacc build`` does), so Yosys adds no read-first emulation around them."""
    from amaranth.back import rtlil
    from bench_fmax import ECP5Target, Harness
    from shiftacc.hw.synth import undefined_collisions
    h = Harness(block)
    text = rtlil.convert(h, name="top", platform=ECP5Target(),
                         ports=[h.clk, h.din, h.rst_in, h.dout])
    return undefined_collisions(text)[0]


def synth(config, workdir, read_first=False):
    """Harness + engine -> Yosys JSON; returns the cell counts and the harness's flip-flops.
    ``read_first``: every block RAM read port read-first (the Verilog route, Yosys emulating
    it around each), as this benchmark measured before it followed the build's rule."""
    if read_first:
        (workdir / "top.v").write_text(harness_verilog(OverlayEngine(config)))
        read = "read_verilog top.v"
    else:
        (workdir / "top.il").write_text(harness_rtlil(OverlayEngine(config)))
        read = "read_rtlil top.il"
    t0 = time.time()
    subprocess.run(["nice", "-n", "5", tool("yosys"), "-q", "-p",
                    f"{read}; synth_ice40 -dsp -top top -json top.json; "
                    "tee -q -o stat.txt stat"], cwd=workdir, check=True, timeout=3600)
    cells = {}
    for line in (workdir / "stat.txt").read_text().splitlines():
        mt = re.match(r"\s+(SB_\w+)\s+(\d+)", line)
        if mt:
            cells[mt.group(1)] = cells.get(mt.group(1), 0) + int(mt.group(2))
    # The harness's flip-flops: not inside the engine (their Q nets are not dut.*).
    net = json.loads((workdir / "top.json").read_text())["modules"]["top"]
    names = {}
    for name, info in net["netnames"].items():
        for b in info["bits"]:
            if isinstance(b, int) and (b not in names or not info.get("hide_name")):
                names[b] = name
    harness_ff = sum(1 for c in net["cells"].values() if c["type"].startswith("SB_DFF")
                     and not names.get(c["connections"]["Q"][0], "").startswith("dut."))
    ff = sum(v for k, v in cells.items() if k.startswith("SB_DFF"))
    return {"yosys_s": round(time.time() - t0), "LUT4": cells.get("SB_LUT4", 0),
            "FF": ff, "FF_engine": ff - harness_ff, "CARRY": cells.get("SB_CARRY", 0),
            "EBR": cells.get("SB_RAM40_4K", 0), "DSP": cells.get("SB_MAC16", 0),
            "SPRAM": cells.get("SB_SPRAM256KA", 0), "harness_ff": harness_ff}


def pnr(workdir, seed, freq=33):
    t0 = time.time()
    report = workdir / f"report{seed}.json"
    proc = subprocess.run(["nice", "-n", "5", tool("nextpnr-ice40"), "--up5k", "--package",
                           "sg48", "--freq", str(freq), "--json", "top.json", "--seed",
                           str(seed), "--report", report.name, "--log", f"pnr{seed}.log",
                           "--quiet"], cwd=workdir, timeout=7200)
    if not report.exists():
        raise RuntimeError(f"nextpnr seed {seed} failed (exit {proc.returncode}), see "
                           f"{workdir}/pnr{seed}.log")
    rep = json.loads(report.read_text())
    fmax = min(v["achieved"] for v in rep["fmax"].values())
    used = {k: v["used"] for k, v in rep["utilization"].items()}
    log = (workdir / f"pnr{seed}.log").read_text()
    path = re.findall(r"Critical path report for clock[^\n]*\n.*\n.*Source (\S+)", log)
    return {"seed": seed, "fmax": fmax, "LC": used.get("ICESTORM_LC", 0),
            "EBR": used.get("ICESTORM_RAM", 0), "DSP": used.get("ICESTORM_DSP", 0),
            "SPRAM": used.get("ICESTORM_SPRAM", 0), "critical_from": path[0] if path else "",
            "pnr_s": round(time.time() - t0)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "out" / "digits.npz"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--no-pnr", action="store_true", help="Yosys counts and cycles only")
    ap.add_argument("--freq", type=float, default=33)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--keep", help="work directory to keep (default: a temporary one)")
    ap.add_argument("--read-first", action="store_true",
                    help="synthesize every block RAM read read-first (Yosys' emulation around "
                         "the COLLISION_FREE memories too), as before this benchmark followed "
                         "the build's rule")
    a = ap.parse_args(argv)

    model, plan = up5k_plan(a.model)
    cfg = plan.config
    eff = efficiency(model, plan)
    print(f"UP5K overlay config: {cfg.lanes} MAC lanes, {cfg.requant_units} requant unit(s), "
          f"{cfg.primitives} primitives, weight/channel/gather rows {cfg.weight_rows}/"
          f"{cfg.channel_rows}/{cfg.gather_rows}, {cfg.max_passes} program rows")
    print(f"{Path(a.model).name}: {eff['macs_per_image']} MACs/image, "
          f"{eff['cycles_per_image']} cycles/image (cycle model), {eff['multipliers']} "
          f"multipliers ({eff['dsp_ice40']} SB_MAC16)")
    print(f"MAC efficiency: {eff['mac_eff_all']:.3f} (every multiplier), "
          f"{eff['mac_eff_lanes']:.3f} (MAC lanes only); MARLANN ~0.80")

    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="ovfit_"))
    work.mkdir(parents=True, exist_ok=True)
    syn = synth(cfg, work, a.read_first)
    print(f"Yosys (engine + harness): {syn['LUT4']} LUT4, {syn['FF']} FF ({syn['FF_engine']} "
          f"in the engine), {syn['CARRY']} carry, {syn['EBR']} EBR, {syn['DSP']} DSP, "
          f"{syn['SPRAM']} SPRAM ({syn['yosys_s']} s)")
    runs = []
    if not a.no_pnr:
        print(f"\n| seed | LC (with harness) | LC engine | % of {UP5K_LC} | EBR | DSP | SPRAM | "
              f"Fmax MHz | critical path from | s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for seed in a.seeds:
            r = pnr(work, seed, a.freq)
            r["LC_engine"] = r["LC"] - syn["harness_ff"]
            runs.append(r)
            print(f"| {seed} | {r['LC']} | {r['LC_engine']} | "
                  f"{100 * r['LC_engine'] / UP5K_LC:.0f} % | {r['EBR']} | {r['DSP']} | "
                  f"{r['SPRAM']} | {r['fmax']:.2f} | {r['critical_from']} | {r['pnr_s']} |",
                  flush=True)
        fm = [r["fmax"] for r in runs]
        print(f"\nFmax over {len(fm)} seed(s): min {min(fm):.2f}, median "
              f"{statistics.median(fm):.2f}, max {max(fm):.2f} MHz; images/s at the min: "
              f"{min(fm) * 1e6 / eff['cycles_per_image']:.0f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"config": cfg.to_json(), "efficiency": eff,
                                            "yosys": syn, "pnr": runs}, indent=2))
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
