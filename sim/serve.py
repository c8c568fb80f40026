"""``shiftacc serve``: the board top in a simulator, reachable as ``socket://HOST:PORT``.

:func:`serve_verilog` builds the simulation top (:class:`~shiftacc.sim.bridge.BridgeHarness`
around :class:`~shiftacc.hw.board.LinkTop`); :func:`serve` builds it once per design (the same
cache as ``shiftacc sim``) and runs :mod:`shiftacc.sim.tb_serve` in a child process group
that is killed on every way out (Ctrl-C, SIGTERM, an error), exactly like the simulations of
:mod:`shiftacc.sim.runner`. The driver (:class:`shiftacc.sw.device.Device`) reaches the
simulated board through the same code path as a real one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from ..hw.plan import plan_network
from ..sw.errors import InternalError
from . import runner as _runner

__all__ = ["SERVE_TOPLEVEL", "SIM_CLOCK_HZ", "SIM_BAUD", "serve_verilog", "serve",
           "link_parameters", "serve_design"]

SERVE_TOPLEVEL = "shiftacc_serve"
#: Clock the simulated board reports (iCEBreaker's 12 MHz oscillator).
SIM_CLOCK_HZ = 12_000_000
#: Line rate of the simulated UART (what an FT2232H runs at 12 MHz: 4 clocks per bit).
SIM_BAUD = 3_000_000
#: Seconds to wait for the simulator to build and start listening.
START_TIMEOUT = 3600


def link_parameters(*, uart, clock_hz, baud):
    """(clock_hz, baud) the board top is built with: without a UART the link is a byte
    stream and reports baud 0."""
    return int(clock_hz), (int(baud) if uart else 0)


def serve_verilog(model, plan, *, uart, clock_hz=SIM_CLOCK_HZ, baud=SIM_BAUD, link_kw=None,
                  undefined_collisions=False):
    """Verilog text of the serve top for ``model`` and ``plan`` (a dataflow or an overlay
    plan), and the :class:`~shiftacc.hw.board.LinkTop` it was made from (``link_kw``: its
    link-engine keywords, e.g. a board's ``Board.link_kw(model)``).

    ``undefined_collisions``: simulate block RAM as an iCE40 build places it (no read-first
    emulation, :func:`shiftacc.hw.synth.undefined_collisions`): every read of a
    collision-free memory that hits the address written in its cycle returns its data
    complemented (:func:`shiftacc.hw.synth.poisoned_collisions`), so a run that depended on
    such a read would not be exact."""
    from ..hw.board import LinkTop
    from ..hw.stream import to_verilog
    from ..hw.synth import poisoned_collisions
    from .bridge import BridgeHarness
    clock_hz, link_baud = link_parameters(uart=uart, clock_hz=clock_hz, baud=baud)
    with poisoned_collisions(undefined_collisions):
        top = LinkTop(model, plan, clock_hz=clock_hz, baud=link_baud, uart=uart,
                      **(link_kw or {}))
        harness = BridgeHarness(top, uart=uart, clock_hz=clock_hz, baud=baud)
        return to_verilog(harness, name=SERVE_TOPLEVEL), top


def serve(model, *, config=None, plan=None, host="127.0.0.1", port=8765,
          simulator="verilator", uart=False, clock_hz=SIM_CLOCK_HZ, baud=SIM_BAUD,
          max_clients=None, workdir=None, on_ready=None, log=print, link_kw=None,
          stall_level=0, stall_seed=0, undefined_collisions=False):
    """Simulate the board top and serve it on a TCP socket until stopped.

    Parameters
    ----------
    model : models.artifact.Model
    config : dict or PlanConfig, optional
        The dataflow planner's config (used when ``plan`` is None).
    plan : hw.plan.Plan or hw.overlay_program.OverlayPlan, optional
        The design to serve; an overlay plan (``plan.engine == "overlay"``) serves the
        overlay engine (:class:`~shiftacc.hw.board.LinkTop` builds it from the plan's config).
        Default: ``plan_network(model, config)``.
    host : str
    port : int
        0 picks a free port (reported through ``on_ready``).
    simulator : {"verilator", "icarus"}
    uart : bool
        Simulate the real UART PHY on both sides of the line (at ``baud``).
    max_clients : int, optional
        Stop after this many client sessions (tests); None serves until stopped.
    on_ready : callable, optional
        Called with ``(host, port)`` once the simulator listens.
    link_kw : dict, optional
        :class:`~shiftacc.hw.board.LinkTop` keywords (a board's ``link_kw(model)``: slots,
        ``block_ram_fifos``, ``max_payload``).
    stall_level : int
        Random stalls on the link's byte streams, probability x/256 per byte and cycle
        (:class:`~shiftacc.sim.bridge.BridgeHarness`); 0: back to back.
    stall_seed : int
        Seed of those stalls.
    undefined_collisions : bool
        Simulate the block RAM of an iCE40 build (:func:`serve_verilog`): a read that hits
        the address written in its cycle returns wrong data.

    Returns
    -------
    dict
        The testbench's statistics (``max_clients`` given): bytes, cycles, and per session
        the probes of the accelerator's ports (:data:`shiftacc.sim.bridge.PROBES`).

    Raises
    ------
    SimulatorMissing, BuildFailed
    InternalError
        The simulator ended or failed to start listening.
    """
    _runner.tool_env(simulator)
    if plan is None:
        plan = plan_network(model, config)
    text, top = serve_verilog(model, plan, uart=uart, clock_hz=clock_hz, baud=baud,
                              link_kw=link_kw, undefined_collisions=undefined_collisions)
    # Per wake-up of the testbench: about a window of bytes on the line.
    step = 128 if not uart else max(256, int(clock_hz / baud * 10 * 32))
    cells = None
    if getattr(getattr(plan, "config", None), "primitives", "generic") == "ice40":
        # The SB_MAC16 / SB_SPRAM256KA instances run on Yosys's own models of them.
        cells = _runner.ice40_cell_models()
    return serve_design(text, simulator=simulator, host=host, port=port, step_cycles=step,
                        watchdog_cycles=int(top.engine.watchdog_cycles),
                        max_clients=max_clients, workdir=workdir, on_ready=on_ready, log=log,
                        busy_cycles=_frames_cycles(plan, top.engine), cell_models=cells,
                        stall_level=stall_level, stall_seed=stall_seed)


def _frames_cycles(plan, engine):
    """Cycles the accelerator may compute without a byte moving on the line: every receive
    slot full of INFER images (0 for a dataflow plan, whose images stream at about the line's
    pace). An overlay image takes its whole program's cycles (``hw/overlay_timing.py``)."""
    if getattr(plan, "engine", "dataflow") != "overlay":
        return 0
    try:
        per_image = plan.cycles_per_image()
    except NotImplementedError:
        per_image = 4 * plan.macs_per_image + engine.image_bytes
    return int(engine.slots * engine.max_images * per_image)


def serve_design(verilog_text, *, simulator, host, port, step_cycles, watchdog_cycles,
                 max_clients=None, workdir=None, on_ready=None, log=print, busy_cycles=0,
                 cell_models=None, stall_level=0, stall_seed=0):
    """Build ``verilog_text`` (a :class:`~shiftacc.sim.bridge.BridgeHarness` top named
    :data:`SERVE_TOPLEVEL`) and serve it; see :func:`serve` (whose statistics it returns).

    ``busy_cycles``: the longest the design may compute with the line silent; the testbench
    keeps simulating at least that long after the last byte (``idle_cycles``), so a reply
    that takes that long is not left waiting for the client's next byte. Under stalls the
    line is slower, never silent longer. ``cell_models``: vendor cell models compiled beside
    the design (:func:`shiftacc.sim.runner.ice40_cell_models`)."""
    _runner.tool_env(simulator)
    bdir = _runner._build(verilog_text, simulator, False, log, toplevel=SERVE_TOPLEVEL,
                          cell_models=cell_models, opt=_runner.verilator_opt(None))
    temporary = workdir is None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="shiftacc-serve-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / "ready.json"
    if ready.exists():
        ready.unlink()
    job = {"host": host, "port": int(port), "ready": str(ready), "step_cycles": step_cycles,
           "watchdog_cycles": int(watchdog_cycles),
           "idle_cycles": 2 * int(watchdog_cycles) + 100_000 + int(busy_cycles),
           "max_clients": max_clients, "stats": str(workdir / "stats.json"),
           "stall_level": int(stall_level), "stall_seed": int(stall_seed) & 0xFFFFFFFF}
    (workdir / "job.json").write_text(json.dumps(job))
    spec = {"action": "test", "simulator": simulator,
            "kwargs": {"test_module": "shiftacc.sim.tb_serve", "hdl_toplevel": SERVE_TOPLEVEL,
                       "hdl_toplevel_lang": "verilog", "testcase": "serve",
                       "build_dir": str(bdir), "test_dir": str(workdir),
                       "extra_env": {"SHIFTACC_JOB": str(workdir / "job.json")},
                       "timescale": list(_runner.TIMESCALE),
                       "log_file": str(workdir / "sim.log")}}
    state = {"announced": False, "t0": time.monotonic()}

    def poll():
        if state["announced"]:
            return
        if ready.exists():
            info = json.loads(ready.read_text())
            state["announced"] = True
            if on_ready is not None:
                on_ready(info["host"], info["port"])
        elif time.monotonic() - state["t0"] > START_TIMEOUT:
            raise InternalError(f"the simulator did not start listening within "
                                f"{START_TIMEOUT} s; see {workdir / 'sim.log'}")

    ok = False
    try:
        _runner._run_child(spec, workdir / "test-job.json", workdir / "runner.log",
                           float("inf"), f"the {simulator} server", poll=poll)
        if max_clients is None or not state["announced"]:
            tail = _runner._tail(workdir / "sim.log", 30) or _runner._tail(
                workdir / "runner.log", 30)
            raise InternalError(f"the {simulator} server stopped unexpectedly "
                                f"(see {workdir / 'sim.log'}):\n{tail}")
        ok = True
        try:
            return json.loads((workdir / "stats.json").read_text())
        except (OSError, ValueError):
            return {}
    finally:
        if temporary and ok:
            shutil.rmtree(workdir, ignore_errors=True)
