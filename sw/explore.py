"""Design-space exploration and random-network regressions as Ray tasks.

A *point* of an exploration is ``(board, engine, budget, seed)``: the planner's
``max_multipliers`` budget, the board (its device, clock and link engine) and nextpnr's
placement seed. :func:`run_point` turns one point into one result row: it plans (a plan that
cannot fit the device is a ``refused`` row with the reason, not an error), builds through the
same code as ``shiftacc build`` (:func:`shiftacc.sw.cli_build.build_board` on a
:class:`shiftacc.boards.top.BoardTop`) into ``DIR/points/<key>/``, optionally simulates a few
images on Verilator against the golden model, and returns the row (:data:`COLUMNS`).

:func:`run_tasks` runs such functions as Ray tasks (or in-process, serially, for the
baseline the benchmark compares against), handing each finished row to a callback as it
comes: :class:`ResultStore` writes ``results.json`` and ``results.csv`` atomically after every
row, so an interrupted run loses only the points still running, and a later run with the
same ``--out`` reuses every ``ok`` row instead of building it again.

:func:`regress_network` is one network of ``shiftacc regress``: a random network drawn as
``benchmarks/random_networks.py`` draws them, simulated (under random stalls, then without
for the measured cycles) against the golden model; a failing network's artifact, images,
config, logs and the ``shiftacc sim`` command that replays it are kept.

Ray is imported only by :func:`connect` and :func:`run_tasks` (the ``explore`` extra); the
point and network functions run without it.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib
import io
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from .errors import EXIT_LINK, BuildFailed, MissingExtra, MissingTool, UsageError
from .outputs import write_atomic

__all__ = ["Point", "COLUMNS", "REGRESS_COLUMNS", "ENGINES", "expand_points", "run_point",
           "ResultStore", "connect", "disconnect", "run_tasks", "pareto", "task_env",
           "regress_network", "draw_network", "overlay_available", "draw_overlay_network",
           "overlay_regress_plan"]

#: The columns of a result row, in the CSV's order.
COLUMNS = ("key", "status", "message", "board", "device", "family", "engine", "budget", "seed",
           "bitstream", "plan", "multipliers", "macs_per_image", "dsp_planned", "DSP_used",
           "DSP_available", "LUT_used", "LUT_available", "FF_used", "FF_available", "RAM_used",
           "RAM_available", "target_mhz", "clock_mhz", "fmax_mhz", "timing_met",
           "cycles_per_image", "predicted_cycles_per_image", "measured_cycles_per_image",
           "images_per_second", "images_per_second_at_clock", "mac_efficiency", "sim_images",
           "sim_mismatches", "synth_seconds", "pnr_seconds", "wall_seconds", "host", "out")

#: The columns of a regression row.
REGRESS_COLUMNS = ("seed", "status", "message", "layers", "shape", "act_bits", "weight_bits",
                   "budget", "multipliers", "images", "stall_level", "mismatches",
                   "stalled_mismatches", "predicted_cycles_per_image",
                   "measured_cycles_per_image", "ideal_cycles_per_image", "mac_efficiency",
                   "wall_seconds", "host", "failure_dir", "replay", "engine", "draws",
                   "stalled_cycles_per_image", "link_cycles_per_image")

#: Engines ``--engines`` names.
ENGINES = ("dataflow", "overlay")

#: Environment variables a task gets from the driver (the simulator cache, tool overrides):
#: Ray workers are long-lived processes whose environment is the cluster's, not this run's.
ENV_PREFIXES = ("SHIFTACC_",)
ENV_NAMES = ("YOSYS", "NEXTPNR_ICE40", "NEXTPNR_ECP5", "ICEPACK", "ECPPACK",
             "AMARANTH_USE_YOSYS")


def overlay_available():
    """True when the overlay engine and its board flow (``shiftacc build --engine overlay``:
    ``cli_build._overlay_plan``) are in this tree."""
    try:
        from . import cli_build
        from ..hw import overlay_program
    except ImportError:
        return False
    return hasattr(cli_build, "_overlay_plan") and hasattr(overlay_program, "compile_overlay")


# ---- points --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    """One design of an exploration.

    Attributes
    ----------
    board : str
        A board of :mod:`shiftacc.boards.registry`.
    engine : str
        ``dataflow`` (or ``overlay`` once it lands).
    budget : int
        The planner's ``max_multipliers``.
    seed : int
        nextpnr's placement seed.
    freq_mhz : float or None
        Target clock (None: the board's).
    """

    board: str
    engine: str
    budget: int
    seed: int = 1
    freq_mhz: float | None = None

    @property
    def key(self):
        """The point's name: its folder under ``DIR/points`` and its row's key."""
        f = "" if self.freq_mhz is None else f"-f{self.freq_mhz:g}"
        return f"{self.board}-{self.engine}-m{self.budget}-s{self.seed}{f}"

    def to_dict(self):
        return {"board": self.board, "engine": self.engine, "budget": self.budget,
                "seed": self.seed, "freq_mhz": self.freq_mhz}


def expand_points(boards, engines, budgets, seeds, freq_mhz=None):
    """Every (board, engine, budget, seed) combination, in that nesting order.

    ``seeds`` is an iterable of nextpnr seeds; duplicates anywhere are dropped.
    """
    out, seen = [], set()
    for b in boards:
        for e in engines:
            for m in budgets:
                for s in seeds:
                    p = Point(b, e, int(m), int(s), freq_mhz)
                    if p.key not in seen:
                        seen.add(p.key)
                        out.append(p)
    return out


def task_env():
    """The driver's environment variables a task needs (:data:`ENV_PREFIXES`,
    :data:`ENV_NAMES`)."""
    env = {k: v for k, v in os.environ.items()
           if k in ENV_NAMES or any(k.startswith(p) for p in ENV_PREFIXES)}
    env.update(task_priority_env())
    return env


#: Carries the driver's scheduling priority (niceness) to the tasks (see :func:`_environment`).
NICE_KEY = "_SHIFTACC_TASK_NICE"


def task_priority_env():
    """``{NICE_KEY: the driver's niceness}``, added to :func:`task_env`."""
    try:
        return {NICE_KEY: str(os.getpriority(os.PRIO_PROCESS, 0))}
    except (AttributeError, OSError):
        return {}


@contextlib.contextmanager
def _environment(env):
    """Set ``env`` for the duration of one task (a Ray worker runs one task at a time).

    Ray starts its workers at niceness 15 so that its own daemons stay responsive; a build
    task then runs Yosys/nextpnr far behind every other process of the machine, which a
    ``shiftacc build`` by the same user would not. With ``env[NICE_KEY]`` the task takes the
    driver's niceness for its duration (the tools inherit it) where the OS allows it (raising
    priority needs CAP_SYS_NICE; otherwise the worker's stays).
    """
    env = dict(env or {})
    nice = env.pop(NICE_KEY, None)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    old_nice = None
    if nice is not None:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            current = os.getpriority(os.PRIO_PROCESS, 0)
            if current != int(nice):
                os.setpriority(os.PRIO_PROCESS, 0, int(nice))
                old_nice = current
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if old_nice is not None:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, 0, old_nice)


def _load_model(model_bytes, folder):
    """The artifact from its bytes (a task may run on another machine than the driver)."""
    from ..models.artifact import load_artifact
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.npz"
    if not path.exists() or path.read_bytes() != model_bytes:
        write_atomic(path, model_bytes)
    return load_artifact(path), path


def _overlay_plan(model, board, budget):
    """The overlay plan of ``shiftacc build --engine overlay --lanes L`` with the most MAC
    lanes ``L`` whose multipliers (MAC lanes + requant units) stay within ``budget``."""
    from types import SimpleNamespace
    from .cli_build import _overlay_plan as build_overlay_plan
    quiet = lambda *a, **k: None  # noqa: E731
    why = None
    for lanes in range(min(int(budget), 256), 0, -1):
        args = SimpleNamespace(overlay_config=None, lanes=lanes, requant_units=None)
        try:
            plan = build_overlay_plan(args, model, board, quiet)
        except UsageError as e:  # a lane count the engine does not take, or no fit
            why = str(e)
            continue
        if plan.multipliers <= budget:
            return plan
        why = (f"{lanes} lanes take {plan.multipliers} multipliers with the requant units")
    raise _Refused(f"no overlay engine within max_multipliers {budget}"
                   + (f": {why}" if why else ""))


def _plan_text(plan):
    """Lanes per layer: ``0:3 1:3 2:3x4 ...`` (``p_in x p_out`` for a conv); the overlay:
    its lanes, requant units and passes."""
    if getattr(plan, "engine", "dataflow") == "overlay":
        c = plan.config
        return (f"overlay {c.lanes} lanes, {c.requant_units} requant, {c.primitives}, "
                f"{len(plan.passes)} passes")
    parts = []
    for i, v in sorted(plan.layer_lanes().items()):
        parts.append(f"{i}:{v['p_in']}x{v['p_out']}" if "p_in" in v else f"{i}:{v['lanes']}")
    return " ".join(parts)


def _node():
    """``hostname`` or ``hostname/ray-node-id-prefix`` inside a Ray task (two nodes of a
    cluster may share a machine)."""
    host = socket.gethostname()
    ray = sys.modules.get("ray")
    if ray is not None:
        with contextlib.suppress(Exception):
            if ray.is_initialized():
                return f"{host}/{ray.get_runtime_context().get_node_id()[:8]}"
    return host


def _blank_row(point, bitstream):
    row = dict.fromkeys(COLUMNS)
    row.update(key=point.key, board=point.board, engine=point.engine, budget=point.budget,
               seed=point.seed, bitstream=bool(bitstream), host=_node(),
               sim_images=0)
    return row


def run_point(point, model_bytes, out_dir, *, bitstream=True, sim_images=0, timeout=3600.0,
              env=None, sim_seed=0):
    """Plan, build and (optionally) simulate one point; never raises for a point's failure.

    Parameters
    ----------
    point : Point or dict
    model_bytes : bytes
        The artifact file's contents.
    out_dir : str or Path
        The exploration's folder; the point builds in ``out_dir/points/<key>/``.
    bitstream : bool
        Run Yosys + nextpnr (False: the build files only, as ``--no-bitstream``).
    sim_images : int
        Random images simulated on Verilator against the golden model (0: none).
    timeout : float
        Wall-clock seconds of the tool run.
    env : dict, optional
        Environment variables for the task (:func:`task_env` of the driver).
    sim_seed : int
        Seed of the simulated images.

    Returns
    -------
    dict
        A row (:data:`COLUMNS`): ``status`` is ``ok``, ``refused`` (the plan cannot fit the
        board; ``message`` says why) or ``failed`` (a tool or the simulation failed;
        ``message`` has the error).
    """
    if isinstance(point, dict):
        point = Point(**point)
    t0 = time.monotonic()
    row = _blank_row(point, bitstream)
    folder = Path(out_dir) / "points" / point.key
    row["out"] = str(folder)
    with _environment(env):
        try:
            _run_point(point, model_bytes, folder, row, bitstream=bitstream,
                       sim_images=sim_images, timeout=timeout, sim_seed=sim_seed)
        except _Refused as e:
            row.update(status="refused", message=str(e))
        except (BuildFailed, MissingTool, UsageError) as e:
            row.update(status="failed", message=f"{type(e).__name__}: {e}")
        except Exception as e:  # a bug in one point must not lose the others' rows
            row.update(status="failed", message=f"{type(e).__name__}: {e}")
            with contextlib.suppress(OSError):
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "error.log").write_text(traceback.format_exc())
    row["wall_seconds"] = round(time.monotonic() - t0, 1)
    return row


class _Refused(Exception):
    """The point's design cannot be put on its board (a row, not an error)."""


def _run_point(point, model_bytes, folder, row, *, bitstream, sim_images, timeout, sim_seed):
    from ..boards.registry import UnknownBoard, find_board
    from ..hw.plan import PlanError, load_config, plan_network
    try:
        board = find_board(point.board)
    except UnknownBoard as e:
        raise _Refused(str(e)) from None
    row.update(device=board.device, family=board.family)
    if point.engine == "overlay" and not overlay_available():
        raise _Refused("the overlay engine is not in this build of shiftacc yet (hw/overlay.py "
                       "and its board flow); use --engines dataflow")
    if point.engine not in ENGINES:
        raise _Refused(f"unknown engine {point.engine!r}; known: {', '.join(ENGINES)}")
    model, model_path = _load_model(model_bytes, folder)
    cfg = load_config(overrides={"max_multipliers": point.budget})
    if point.engine == "overlay":
        plan = _overlay_plan(model, board, point.budget)
    else:
        try:
            plan = plan_network(model, cfg)
        except PlanError as e:
            raise _Refused(f"no plan within max_multipliers {point.budget}: {e}") from None
    row.update(plan=_plan_text(plan), multipliers=plan.multipliers,
               macs_per_image=plan.macs_per_image,
               predicted_cycles_per_image=plan.predicted_cycles_per_image,
               cycles_per_image=plan.predicted_cycles_per_image)
    if board.family in ("ice40", "ecp5"):
        row["dsp_planned"] = plan.dsp(board.family)
    _check_device(model, plan, board)

    from ..boards.pll import PLLError
    from ..boards.top import BoardTop
    from .cli_build import build_board
    freq_hz = point.freq_mhz * 1e6 if point.freq_mhz is not None else None
    try:
        top = BoardTop(board, model, plan, freq_hz=freq_hz)
    except (PLLError, ValueError) as e:
        raise _Refused(f"{board.name}: {e}") from None
    bitstream = bool(bitstream and board.bitstream)
    row["bitstream"] = bitstream
    build_dir = folder / "build"
    report = build_board(board, top, build_dir, plan=plan, seed=point.seed, timeout=timeout,
                         bitstream=bitstream)
    write_atomic(build_dir / "build_report.json", json.dumps(report, indent=1))
    row.update(target_mhz=report["target_mhz"], clock_mhz=report["clock_mhz"],
               fmax_mhz=report["fmax_mhz"], timing_met=report["timing_met"],
               images_per_second=report["images_per_second"],
               images_per_second_at_clock=report.get("images_per_second_at_clock"),
               synth_seconds=report.get("synth_seconds"), pnr_seconds=report.get("pnr_seconds"))
    for name in ("DSP", "LUT", "FF", "RAM"):
        u = report["utilization"].get(name)
        if u:
            row[f"{name}_used"], row[f"{name}_available"] = u["used"], u["available"]
    cycles = plan.predicted_cycles_per_image
    if sim_images and point.engine == "overlay":
        row["message"] = "not simulated: explore simulates dataflow points only"
    elif sim_images:
        row["sim_images"] = int(sim_images)
        cycles = _simulate_point(model, model_path, cfg, folder, row, sim_images, sim_seed)
    row["cycles_per_image"] = cycles
    row["mac_efficiency"] = plan.macs_per_image / max(1, plan.multipliers * cycles)
    if row["fmax_mhz"]:
        row["images_per_second"] = row["fmax_mhz"] * 1e6 / cycles
    if row["status"] is None:
        row["status"] = "ok"


def _check_device(model, plan, board):
    """Refuse a plan over the device's DSP or RAM blocks (no headroom: the build decides)."""
    from ..hw import devices
    from ..hw.plan import PlanError
    from .cli_build import check_fit
    try:
        check_fit(plan, board)
    except UsageError as e:
        raise _Refused(str(e)) from None
    if getattr(plan, "engine", "dataflow") == "overlay":
        return  # DSPs checked above; its SPRAM/RAM use is the engine's config: the tools decide
    try:
        device = devices.get_device(board.device)
    except PlanError:
        return  # a device the fit model does not know: DSPs checked above, the tools decide
    use = devices.device_usage(model, plan, device, headroom=0.0, link=True,
                               link_kw=board.link_kw(model))
    over = [f"{use[k]['used']} {use[k]['cell']} where {use[k]['available']} exist"
            for k in ("dsp", "ram_blocks") if use[k]["used"] > use[k]["available"]]
    if over:
        raise _Refused(f"the design cannot fit {board.name} ({board.device}): it needs "
                       f"{'; '.join(over)} ({plan.multipliers} multipliers planned)")


def _simulate_point(model, model_path, cfg, folder, row, n, seed):
    import numpy as np
    from ..sim.runner import simulate
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n,) + tuple(model.input_shape)).astype(np.uint8)
    res = simulate(model, images, model_path=model_path, config=cfg, simulator="verilator",
                   batch_images=n, stall_level=0, seed=seed, workdir=folder / "sim",
                   log=lambda *a, **k: None)
    row["sim_images"] = n
    row["sim_mismatches"] = int(res["golden_mismatches"])
    row["measured_cycles_per_image"] = res.get("cycles_per_image")
    if res["golden_mismatches"]:
        row["status"] = "failed"
        row["message"] = (f"{res['golden_mismatches']} of {n} simulated images differ from "
                          f"the golden model (run folder {folder / 'sim'})")
    measured = res.get("cycles_per_image")
    return measured if measured else row["predicted_cycles_per_image"]


# ---- the result store ----------------------------------------------------------------------

class ResultStore:
    """``DIR/results.json`` and ``DIR/results.csv``, rewritten atomically after every row.

    Parameters
    ----------
    out : Path
    meta : dict
        What the rows depend on besides their key (the model's SHA-256, ...); a folder whose
        stored ``meta`` differs on ``model_sha256`` is refused (rows of another model).
    columns : tuple of str
    key : str
        The column naming a row.
    """

    def __init__(self, out, meta, columns=COLUMNS, key="key"):
        self.out = Path(out)
        self.meta = dict(meta)
        self.columns = columns
        self.key = key
        self.rows = {}
        path = self.out / "results.json"
        if path.exists():
            try:
                old = json.loads(path.read_text())
                rows = old["rows"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise UsageError(f"{path} is not a results file of this command ({e}); "
                                 f"choose another --out") from None
            prev = old.get("meta", {}).get("model_sha256")
            if prev is not None and prev != self.meta.get("model_sha256"):
                raise UsageError(f"{self.out} holds the results of another model (SHA-256 "
                                 f"{prev[:12]}...); choose another --out")
            for r in rows:
                self.rows[str(r[key])] = r

    def reusable(self, key, **match):
        """The stored row for ``key`` if it finished ``ok`` with the same ``match`` values."""
        r = self.rows.get(str(key))
        if r is None or r.get("status") != "ok":
            return None
        if any(r.get(k) != v for k, v in match.items()):
            return None
        return r

    def add(self, row):
        self.rows[str(row[self.key])] = row
        self.save()

    def save(self):
        self.out.mkdir(parents=True, exist_ok=True)
        rows = list(self.rows.values())
        write_atomic(self.out / "results.json",
                     json.dumps({"meta": self.meta, "rows": rows}, indent=1, default=str))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(self.columns), extrasaction="ignore",
                           lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in self.columns})
        write_atomic(self.out / "results.csv", buf.getvalue())


# ---- Ray -----------------------------------------------------------------------------------

def _ray():
    try:
        import ray
    except ImportError:
        raise MissingExtra("explore and regress run on Ray, which is not installed: pip "
                           "install 'shiftacc[explore]' (or pip install 'ray[default]')") \
            from None
    return ray


class ClusterUnreachable(UsageError):
    """Nothing answers at ``--address`` (exit 5, as a link that cannot be reached)."""

    status = EXIT_LINK


def _reachable(hostport, timeout=3.0):
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address {hostport!r}: give auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return
    except OSError as e:
        raise ClusterUnreachable(f"no Ray cluster answers at {hostport} ({e.strerror or e}); start "
                          f"one with 'ray start --head --port PORT', or leave --address out "
                          f"to run on this machine") from None


def _start_embedded(ray, num_cpus, quiet, attempts=2):
    """A private Ray instance on this machine; a start that times out (a machine so loaded
    that the raylet misses Ray's start-up deadline) is tried once more, then reported."""
    for attempt in range(attempts):
        try:
            # "local": a new private instance even when `ray start` runs on this machine
            # (without an address ray.init would attach to that cluster instead).
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(),
                     include_dashboard=False, **quiet)
            return
        except (ValueError, TypeError):
            raise
        except Exception as e:
            with contextlib.suppress(Exception):
                ray.shutdown()
            if attempt + 1 == attempts:
                raise ClusterUnreachable(
                    f"Ray did not start on this machine ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:200]}); retry when the machine is less busy, "
                    f"attach to a running cluster with --address, or run without Ray "
                    f"(--serial)") from None


def connect(address=None, num_cpus=None):
    """Attach to Ray: embedded (``address`` None: a private instance of ``num_cpus`` CPUs,
    quiet, no dashboard), ``auto`` (the cluster this machine belongs to), ``HOST:PORT`` (a
    head's GCS) or ``ray://HOST:PORT`` (Ray Client).

    Returns
    -------
    bool
        True when this call started or attached Ray (the caller disconnects it); False when
        Ray was already initialised in this process (left as it is).

    Raises
    ------
    UsageError
        (exit 5) nothing answers at the address; (exit 2) a malformed address.
    """
    ray = _ray()
    if address not in (None, "", "local", "auto"):
        # Checked first: ray.init retries an unreachable head for minutes.
        _reachable(address[len("ray://"):] if address.startswith("ray://") else address)
    if ray.is_initialized():
        return False
    quiet = dict(log_to_driver=False, logging_level="ERROR")
    # ray.init installs its own SIGTERM handler (it aborts the process); the command line's
    # (terminate -> finally blocks -> Ray shut down, rows written) is put back.
    term = signal.getsignal(signal.SIGTERM)
    try:
        if address in (None, "", "local"):
            _start_embedded(ray, num_cpus, quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, TimeoutError) as e:
        hint = ""
        if address != "auto" and os.environ.get("RAY_AUTH_MODE") != "token":
            hint = ("; it answers on its port, so it may require token authentication (Ray "
                    ">= 2.59 turns it on for local clusters): run with RAY_AUTH_MODE=token and "
                    "its token (~/.ray/auth_token or RAY_AUTH_TOKEN), as its nodes were started")
        raise ClusterUnreachable(f"cannot attach to the Ray cluster at {address}: "
                                 f"{str(e).splitlines()[0][:200]}{hint}") from None
    except Exception as e:
        if type(e).__name__ != "AuthenticationError":
            raise
        # Ray >= 2.59 starts local clusters with token authentication.
        raise ClusterUnreachable(
            f"the Ray cluster at {address} refused this driver's token: run with "
            f"RAY_AUTH_MODE=token and the cluster's token (~/.ray/auth_token, or "
            f"RAY_AUTH_TOKEN), as its nodes were started ({str(e).splitlines()[0][:200]})") \
            from None
    finally:
        if term is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, term)
    return True


def disconnect(started):
    if started:
        _ray().shutdown()


def cluster_cpus():
    """CPUs of the attached Ray cluster."""
    return int(_ray().cluster_resources().get("CPU", 0))


def run_tasks(fn, calls, *, on_result, executor="ray", cpus_per_task=1, progress=None,
              poll=1.0, on_error=None):
    """Run ``fn(*args, **kwargs)`` for every ``(tag, args, kwargs)`` of ``calls``.

    ``executor="ray"``: each call is a Ray task needing ``cpus_per_task`` CPUs (no retries: a
    point's failure is its row), results are taken as they finish (``ray.wait``) and handed
    to ``on_result(tag, result)``; Ctrl-C cancels the tasks still pending and re-raises.
    ``executor="serial"``: the same calls one after another in this process (the baseline).

    ``on_error(tag, exc)`` receives a task whose worker died (its exception), else it is
    raised. ``progress`` is a tqdm bar (or None), advanced per finished call.
    """
    if executor == "serial":
        for tag, args, kwargs in calls:
            on_result(tag, fn(*args, **kwargs))
            if progress is not None:
                progress.update(1)
        return
    ray = _ray()
    remote = ray.remote(num_cpus=cpus_per_task, max_retries=0)(fn)
    # Large values (the artifact's bytes) go to the object store once, not once per task.
    shared = {}

    def put(v):
        if isinstance(v, (bytes, bytearray)) and len(v) > 4096:
            if id(v) not in shared:
                shared[id(v)] = ray.put(v)
            return shared[id(v)]
        return v
    pending = {}
    for tag, args, kwargs in calls:
        ref = remote.remote(*[put(a) for a in args], **{k: put(v) for k, v in kwargs.items()})
        pending[ref] = tag
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=poll)
            for ref in done:
                tag = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as e:  # the worker died (killed, out of memory, ...)
                    if on_error is None:
                        raise
                    on_error(tag, e)
                else:
                    on_result(tag, result)
                if progress is not None:
                    progress.update(1)
    except BaseException:
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise


# ---- the Pareto front ------------------------------------------------------------------------

def pareto(rows, resource):
    """The rows no other row beats: at most the resource (``LUT``, ``DSP``) and at least the
    images/s, one strictly better. Only ``ok`` rows with both figures count.

    Returns
    -------
    list of dict
        Sorted by the resource, ascending.
    """
    col = f"{resource}_used"
    pts = [r for r in rows if r.get("status") == "ok" and r.get(col) is not None
           and r.get("images_per_second")]
    front = []
    for r in pts:
        x, y = r[col], r["images_per_second"]
        if not any(o[col] <= x and o["images_per_second"] >= y and
                   (o[col] < x or o["images_per_second"] > y) for o in pts):
            front.append(r)
    return sorted(front, key=lambda r: (r[col], -r["images_per_second"]))


# ---- regress ---------------------------------------------------------------------------------

def draw_network(seed, *, attention=False, max_size=12, max_width=20, max_blocks=3):
    """The random network and multiplier budget of regression seed ``seed``.

    The draws follow ``benchmarks/random_networks.py``: image size 5..12 (capped at
    ``max_size``), 1..3 input channels, 1..3 blocks (capped at ``max_blocks``), random widths
    (up to ``max_width``), shifts, strides, pools, activation and weight bits, a budget
    of 16..199 multipliers, and with ``attention`` a random non-empty subset of the version-2
    ops.

    Returns
    -------
    (Model, int, numpy.random.Generator)
        The model (validated), the budget and the generator for the images and stalls.
    """
    import numpy as np
    from ..models.netgen import ATTENTION_OPS, random_model
    rng = np.random.default_rng(seed)
    hi = max(5, min(12, int(max_size)))
    size = (int(rng.integers(5, hi + 1)), int(rng.integers(5, hi + 1)))
    chosen = ()
    if attention:
        chosen = tuple(op for op in ATTENTION_OPS if rng.random() < 0.6) or \
            (ATTENTION_OPS[int(rng.integers(0, 3))],)
    model = random_model(rng, size=size, in_channels=int(rng.choice([1, 2, 3])),
                         blocks=int(rng.integers(1, max(1, min(3, max_blocks)) + 1)),
                         max_width=max(3, int(max_width)), attention=chosen)
    budget = int(rng.integers(16, 200))
    return model, budget, rng


def regress_network(seed, out_dir, *, images=8, simulator="verilator", attention=False,
                    max_size=12, max_width=20, max_blocks=3, env=None, corrupt_param=None,
                    engine="dataflow", overlay=None):
    """Simulate regression network ``seed`` against the golden model; never raises.

    Two runs of the same simulator build: one under random valid/ready stalls (the
    correctness check under back-pressure), one without (the measured steady-state cycles
    per image, compared with the plan's prediction). A network with a mismatch, a stall or
    an error keeps ``out_dir/failures/<seed>/`` (artifact, images, config, run folders, a
    ``replay.sh`` with the ``shiftacc sim`` command); a passing one leaves nothing.

    Parameters
    ----------
    corrupt_param : (int, int), optional
        Testing the regression: XOR parameter word ``[0]`` with ``[1]`` in both runs (the
        planted fault must be reported as a mismatch).
    engine : {"dataflow", "overlay"}
        ``overlay``: the network is compiled for one overlay config and run behind the host
        link (:func:`_regress_overlay`).
    overlay : dict, optional
        With ``engine="overlay"``: ``{"config": OverlayConfig fields, "board": board name or
        None}`` (see :func:`overlay_regress_plan`).

    Returns
    -------
    dict
        A row (:data:`REGRESS_COLUMNS`); ``status`` ``ok``, ``mismatch``, ``cycles`` (the
        overlay's measured cycles/image differ from the prediction), ``refused`` (no drawn
        network fits the overlay) or ``failed``.
    """
    t0 = time.monotonic()
    row = dict.fromkeys(REGRESS_COLUMNS)
    row.update(seed=int(seed), host=_node(), images=int(images), engine=engine)
    fail_dir = Path(out_dir) / "failures" / str(seed)
    work = Path(tempfile.mkdtemp(prefix=f"shiftacc-regress-{seed}-"))
    keep = False
    with _environment(env):
        try:
            run = _regress_overlay if engine == "overlay" else _regress
            extra = {"overlay": overlay} if engine == "overlay" else {}
            keep = run(seed, work, row, images=images, simulator=simulator,
                       attention=attention, max_size=max_size, max_width=max_width,
                       max_blocks=max_blocks, corrupt_param=corrupt_param, **extra)
        except Exception as e:
            keep = True
            row.update(status="failed", message=f"{type(e).__name__}: {e}")
            with contextlib.suppress(OSError):
                (work / "error.log").write_text(traceback.format_exc())
    if keep:
        if fail_dir.exists():
            shutil.rmtree(fail_dir)
        fail_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(work), str(fail_dir))
        row["failure_dir"] = str(fail_dir)
        row["replay"] = (_replay_overlay(fail_dir, row, simulator, overlay)
                         if engine == "overlay" else _replay_command(fail_dir, row, simulator))
        if row["replay"]:
            (fail_dir / "replay.sh").write_text("#!/bin/sh\n# Replays the failing run of "
                                                f"regression network {seed}.\n"
                                                f"{row['replay']}\n")
    else:
        shutil.rmtree(work, ignore_errors=True)
    row["wall_seconds"] = round(time.monotonic() - t0, 1)
    return row


def _regress(seed, work, row, *, images, simulator, attention, max_size, max_width,
             max_blocks, corrupt_param):
    import numpy as np
    from ..hw.plan import load_config, plan_network
    from ..models.artifact import save_artifact
    from ..sim.runner import simulate
    from .errors import Stalled
    model, budget, rng = draw_network(seed, attention=attention, max_size=max_size,
                                      max_width=max_width, max_blocks=max_blocks)
    path = work / "model.npz"
    model = save_artifact(path, model)
    cfg = load_config(overrides={"max_multipliers": budget})
    (work / "config.json").write_text(json.dumps({"max_multipliers": budget}))
    plan = plan_network(model, cfg)
    imgs = rng.integers(0, 256, (int(images),) + tuple(model.input_shape)).astype(np.uint8)
    np.save(work / "images.npy", imgs)
    stall = int(rng.integers(32, 160))
    short = {"conv1x1": "c", "replicate": "r", "shift": "s", "maxpool2": "p", "gap": "g",
             "channel_attention": "ECA", "spatial_attention": "SAM", "dynamic_conv1x1": "dyn"}
    row.update(layers="-".join(short.get(l.op, l.op) + ("/2" if l.stride == 2 and
                                                         l.op.endswith("conv1x1") else "")
                               for l in model.layers),
               shape="x".join(map(str, model.input_shape)), act_bits=model.act_bits,
               weight_bits=model.weight_bits, budget=budget, multipliers=plan.multipliers,
               stall_level=stall, predicted_cycles_per_image=plan.predicted_cycles_per_image,
               ideal_cycles_per_image=round(plan.ideal_cycles_per_image, 2))
    common = dict(model_path=path, config=cfg, simulator=simulator, batch_images=len(imgs),
                  log=lambda *a, **k: None, corrupt_param=corrupt_param)
    try:
        stalled = simulate(model, imgs, stall_level=stall, seed=int(seed) % (1 << 31),
                           workdir=work / "stalled", **common)
        clean = simulate(model, imgs, stall_level=0, seed=int(seed) % (1 << 31),
                         workdir=work / "clean", **common)
    except Stalled as e:
        row.update(status="failed", message=f"stalled: {e}")
        return True
    row["stalled_mismatches"] = int(stalled["golden_mismatches"])
    row["mismatches"] = int(clean["golden_mismatches"])
    cpi = clean.get("cycles_per_image")
    row["measured_cycles_per_image"] = cpi
    if cpi:
        row["mac_efficiency"] = round(plan.macs_per_image / (plan.multipliers * cpi), 4)
    bad = row["stalled_mismatches"] + row["mismatches"]
    if bad:
        row.update(status="mismatch", message=f"{row['stalled_mismatches']} images differ "
                   f"under stalls, {row['mismatches']} without")
        return True
    row["status"] = "ok"
    return False


#: Draws per overlay regression seed before the network is reported as refused.
OVERLAY_DRAWS = 50


def overlay_regress_plan(model, overlay):
    """``(plan, link_kw)`` of ``model`` on the regression's overlay: ``overlay["board"]`` set,
    the config ``shiftacc build --board B --engine overlay`` places (its own code,
    ``sw.cli_build``; ``overlay["config"]`` fields override it as ``--overlay-config`` does)
    and the board's link keywords; else ``OverlayConfig(**overlay["config"])``.

    Raises
    ------
    hw.overlay_program.OverlayFitError
        The overlay refuses the network (a v2 op, a map over ``fm_words``, a table over its
        capacity, ...), in its words.
    """
    import argparse
    from ..hw.overlay_program import OverlayConfig, OverlayFitError, compile_overlay
    fields = dict(overlay.get("config") or {})
    if overlay.get("board"):
        from ..boards.registry import find_board
        from . import cli_build
        from .errors import UsageError
        board = find_board(overlay["board"])
        args = argparse.Namespace(overlay_config=json.dumps(fields) if fields else None,
                                  lanes=None, requant_units=None)
        try:
            plan = cli_build._overlay_plan(args, model, board, lambda *a, **k: None)
        except UsageError as e:
            raise OverlayFitError(str(e)) from None
        return plan, board.link_kw(model)
    return compile_overlay(model, OverlayConfig(**fields)), None


def draw_overlay_network(seed, overlay, **draw_kw):
    """The network of overlay regression seed ``seed``: :func:`draw_network` of ``seed``,
    then of ``seed * OVERLAY_DRAWS + k`` for k = 1, 2, ... while the overlay refuses it.

    Returns
    -------
    (Model, OverlayPlan, dict or None, numpy.random.Generator, int)
        Model, plan, link keywords (see :func:`overlay_regress_plan`), the generator for
        images and stalls, and the number of draws.

    Raises
    ------
    hw.overlay_program.OverlayFitError
        Every one of :data:`OVERLAY_DRAWS` draws was refused (the last reason).
    """
    from ..hw.overlay_program import OverlayFitError
    last = None
    for k in range(OVERLAY_DRAWS):
        model, _, rng = draw_network(int(seed) * OVERLAY_DRAWS + k if k else int(seed),
                                     **draw_kw)
        try:
            plan, link_kw = overlay_regress_plan(model, overlay)
            return model, plan, link_kw, rng, k + 1
        except OverlayFitError as e:
            last = e
    raise OverlayFitError(f"the overlay refused all {OVERLAY_DRAWS} draws (last: {last})")


def _regress_overlay(seed, work, row, *, images, simulator, attention, max_size, max_width,
                     max_blocks, corrupt_param, overlay):
    """One overlay regression network: draws ``(seed, k)`` for k = 0, 1, ... until the
    overlay accepts one (at most :data:`OVERLAY_DRAWS`; every refusal is a draw, not a
    failure), then two runs behind the host link (:func:`shiftacc.sim.linksim.simulate_link`):
    under random stalls on the link's byte streams, then back to back. Both must equal the
    golden model, and back to back every clean period at the engine's ports must equal the
    compiled program's predicted cycles/image (``hw/overlay_timing``)."""
    import numpy as np
    from ..hw.overlay_program import OverlayFitError
    from ..models import golden
    from ..models.artifact import save_artifact
    from ..sim.linksim import cycles_agree, engine_cycles, simulate_link
    try:
        model, plan, link_kw, rng, draws = draw_overlay_network(
            seed, overlay, attention=attention, max_size=max_size, max_width=max_width,
            max_blocks=max_blocks)
    except OverlayFitError as e:
        row.update(status="refused", draws=OVERLAY_DRAWS, message=str(e))
        return False
    row["draws"] = draws
    path = work / "model.npz"
    model = save_artifact(path, model)
    cfg = plan.config.to_json()
    (work / "overlay.json").write_text(json.dumps(cfg))
    imgs = rng.integers(0, 256, (int(images),) + tuple(model.input_shape)).astype(np.uint8)
    imgs &= (1 << model.input_bits) - 1 if hasattr(model, "input_bits") else 255
    np.save(work / "images.npy", imgs)
    stall = int(rng.integers(32, 250))
    mults = plan.cost().multiplier_count
    row.update(layers=_layers_text(model), shape="x".join(map(str, model.input_shape)),
               act_bits=model.act_bits, weight_bits=model.weight_bits, budget=None,
               multipliers=mults, stall_level=stall,
               predicted_cycles_per_image=plan.cycles_per_image(),
               ideal_cycles_per_image=round(plan.macs_per_image / mults, 2))
    expected = golden.run(model, imgs)
    common = dict(simulator=simulator, link_kw=link_kw, seed=int(seed) % (1 << 31),
                  corrupt_param=corrupt_param, log=lambda *a, **k: None)
    stalled = simulate_link(model, plan, imgs, stall_level=stall, workdir=work / "stalled",
                            **common)
    clean = simulate_link(model, plan, imgs, stall_level=0, workdir=work / "clean", **common)
    bad_s = int(np.sum(np.any(stalled["logits"] != expected, axis=1)))
    bad_c = int(np.sum(np.any(clean["logits"] != expected, axis=1)))
    row["stalled_mismatches"], row["mismatches"] = bad_s, bad_c
    cmin, cmax, ccount, per = engine_cycles(clean["probes"])
    measured = per if per is not None else cmin
    if isinstance(measured, float) and measured.is_integer():
        measured = int(measured)
    row["measured_cycles_per_image"] = measured
    row["stalled_cycles_per_image"] = round(stalled["link_cycles"] / len(imgs), 1)
    row["link_cycles_per_image"] = round(clean["link_cycles"] / len(imgs), 1)
    if row["measured_cycles_per_image"]:
        row["mac_efficiency"] = round(plan.macs_per_image
                                      / (mults * row["measured_cycles_per_image"]), 4)
    for name, res in (("stalled", stalled), ("clean", clean)):
        (work / f"{name}.json").write_text(json.dumps(
            {"logits": res["logits"].tolist(), "golden": expected.tolist(),
             "probes": res["probes"], "link_cycles": res["link_cycles"],
             "stall_level": res["stall_level"], "seed": res["seed"]}))
    if bad_s or bad_c:
        i = int(np.nonzero(np.any((stalled["logits"] if bad_s else clean["logits"])
                                  != expected, axis=1))[0][0])
        row.update(status="mismatch", message=f"{bad_s} images differ under stalls, {bad_c} "
                   f"without (first: image {i})")
        return True
    predicted = row["predicted_cycles_per_image"]
    if not cycles_agree(clean["probes"], predicted):
        row.update(status="cycles", message=f"engine cycles/image {per} (window less "
                   f"starved), clean periods {cmin}..{cmax} over {ccount} image pairs, "
                   f"predicted {predicted}")
        return True
    row["status"] = "ok"
    return False


def _layers_text(model):
    short = {"conv1x1": "c", "replicate": "r", "shift": "s", "maxpool2": "p", "gap": "g",
             "channel_attention": "ECA", "spatial_attention": "SAM", "dynamic_conv1x1": "dyn"}
    return "-".join(short.get(l.op, l.op) + ("/2" if l.stride == 2 and
                                             l.op.endswith("conv1x1") else "")
                    for l in model.layers)


def _replay_overlay(fail_dir, row, simulator, overlay):
    if not (fail_dir / "model.npz").exists() or not (fail_dir / "images.npy").exists():
        return None
    board = (overlay or {}).get("board")
    stalled = row.get("stalled_mismatches") or not row.get("mismatches")
    level = (row.get("stall_level") or 0) if stalled else 0
    board_opt = f"--board {board} " if board else ""
    return (f"shiftacc sim {fail_dir / 'model.npz'} --images {fail_dir / 'images.npy'} "
            f"--engine overlay --overlay-config {fail_dir / 'overlay.json'} {board_opt}"
            f"--simulator {simulator} --stall-level {level} "
            f"--seed {int(row['seed']) % (1 << 31)} --workdir {fail_dir / 'replay'}")


def _replay_command(fail_dir, row, simulator):
    if not (fail_dir / "model.npz").exists() or not (fail_dir / "images.npy").exists():
        return None
    stalled = row.get("stalled_mismatches") or not row.get("mismatches")
    level = row.get("stall_level") or 0 if stalled else 0
    return (f"shiftacc sim {fail_dir / 'model.npz'} --images {fail_dir / 'images.npy'} "
            f"--config {fail_dir / 'config.json'} --simulator {simulator} "
            f"--stall-level {level} --seed {int(row['seed']) % (1 << 31)} "
            f"--workdir {fail_dir / 'replay'}")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
