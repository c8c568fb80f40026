"""A whole device simulated behind the host link, driven by the host driver in this process.

:func:`simulate_link` is what ``shiftacc sim --engine overlay`` and ``shiftacc regress
--engine overlay`` run: the board top (:class:`~shiftacc.hw.board.LinkTop`: link engine +
accelerator, the overlay engine for an overlay plan) is served by :func:`shiftacc.sim.serve.serve`
in a simulator on a local TCP port, and :class:`shiftacc.sw.device.Device` loads the
parameters and streams the images through ``socket://`` exactly as ``shiftacc run`` does with a
board. Every logit is the gateware's; the caller compares them with the golden model.

Cycles per image come from two places:

- the device's STATUS cycle counter over the batch (``link_cycles_per_image``): what a host
  sees, the link's framing included;
- the probes of the accelerator's own ports (:class:`~shiftacc.sim.bridge.BridgeHarness`):
  the shortest and longest *clean* period between consecutive images' first beats (nothing
  starved the accelerator or held its logits back), which is exactly one image's compute time
  and must equal ``hw/overlay_timing``'s prediction, and the whole window between the first
  and the last image's first beat less the cycles the accelerator waited for image bytes.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np

__all__ = ["simulate_link", "corrupted_words", "engine_cycles", "cycles_agree"]

#: Seconds the driver waits for any reply (a simulated device is slow, but never this slow).
REPLY_TIMEOUT = 60.0
#: Seconds the simulator may take to build and start listening (a cold Verilator build of
#: the iCE40 cell models takes minutes on a loaded machine).
START_TIMEOUT = 3600.0
#: Seconds to wait for the server thread after the client is gone.
JOIN_TIMEOUT = 300.0


@contextlib.contextmanager
def corrupted_words(corrupt_param):
    """Within the block, the driver's parameter words have word ``corrupt_param[0]`` XORed
    with ``corrupt_param[1]`` (testing that a regression reports a planted fault); None: no
    change. Patches ``hw.top.param_words``, which :meth:`Device.load` calls."""
    if corrupt_param is None:
        yield
        return
    from ..hw import top
    original = top.param_words
    word, xor = (int(v) for v in corrupt_param)

    def param_words(model, plan):
        words = list(original(model, plan))
        words[word % len(words)] ^= xor
        return words

    top.param_words = param_words
    try:
        yield
    finally:
        top.param_words = original


def simulate_link(model, plan, images, *, simulator="verilator", uart=False, link_kw=None,
                  stall_level=0, seed=0, workdir=None, corrupt_param=None, progress=False,
                  log=print, start_timeout=START_TIMEOUT, undefined_collisions=False):
    """Serve ``plan``'s board top in a simulator and run ``images`` through the host driver.

    Parameters
    ----------
    model : models.artifact.Model
    plan : hw.plan.Plan or hw.overlay_program.OverlayPlan
    images : ndarray [N, H, W, C]
    simulator : {"verilator", "icarus"}
    uart : bool
        The UART PHY on the line (slow) instead of byte streams.
    link_kw : dict, optional
        Link-engine keywords (a board's ``link_kw(model)``).
    stall_level : int
        0..255: random stalls on the link's byte streams (x/256 per cycle), seeded by ``seed``.
    seed : int
    workdir : path, optional
        Keep the server's job, logs and statistics there.
    corrupt_param : (int, int), optional
        See :func:`corrupted_words`.
    start_timeout : float
        Seconds the simulator may take to build and start listening.
    undefined_collisions : bool
        Block RAM as an iCE40 build places it (:func:`shiftacc.sim.serve.serve_verilog`).

    Returns
    -------
    dict
        ``logits`` (int64 [N, classes]), ``design_id``, ``link_cycles`` (STATUS counter over
        the batch), ``probes`` (the accelerator-port counters of the session), ``wall_seconds``,
        ``stall_level``, ``seed``, ``load`` (the driver's load figures).

    Raises
    ------
    SimulatorMissing, BuildFailed, InternalError
        From :func:`shiftacc.sim.serve.serve`.
    shiftacc.sw.device.LinkError
        The simulated device stopped answering (bounded by :data:`REPLY_TIMEOUT`).
    """
    from ..sw.device import Device
    from ..sw.errors import InternalError
    from .serve import serve
    ready, box = threading.Event(), {}

    def on_ready(host, port):
        box["addr"] = (host, port)
        ready.set()

    def run_server():
        try:
            box["stats"] = serve(model, plan=plan, port=0, simulator=simulator, uart=uart,
                                 max_clients=1, workdir=workdir, on_ready=on_ready, log=log,
                                 link_kw=link_kw, stall_level=stall_level,
                                 stall_seed=int(seed) & 0xFFFFFFFF,
                                 undefined_collisions=undefined_collisions)
        except BaseException as e:   # noqa: BLE001 (re-raised in the calling thread)
            box["error"] = e
        finally:
            ready.set()

    server = threading.Thread(target=run_server, name="shiftacc-linksim", daemon=True)
    server.start()
    connected = False
    try:
        if not ready.wait(start_timeout):
            raise InternalError(f"the simulated device did not start listening within "
                                f"{start_timeout:.0f} s")
        if "error" in box:
            raise box["error"]
        url = "socket://{}:{}".format(*box["addr"])
        t0 = time.perf_counter()
        with corrupted_words(corrupt_param), \
                Device.open(url, timeout=REPLY_TIMEOUT) as dev:
            connected = True
            ident = dev.identify()
            load = dev.load(model, progress=progress)
            before = dev.status()
            logits = dev.infer(images, progress=progress)
            after = dev.status()
        wall = time.perf_counter() - t0
    finally:
        if not connected and "addr" in box:
            # serve stops after one client: be that client, so the simulator ends.
            with contextlib.suppress(OSError):
                socket.create_connection(box["addr"], timeout=5).close()
        server.join(JOIN_TIMEOUT)
    if "error" in box:
        raise box["error"]
    stats = box.get("stats") or {}
    sessions = stats.get("sessions") or [{}]
    return {"logits": np.asarray(logits, np.int64), "design_id": ident.design_id,
            "link_cycles": int(after["cycles"] - before["cycles"]), "probes": sessions[-1],
            "wall_seconds": wall, "stall_level": int(stall_level), "seed": int(seed),
            "load": load}


def engine_cycles(probes, images=None):
    """Per-image compute cycles from the probes: ``(clean_min, clean_max, clean_count,
    window_per_image)``.

    ``window_per_image`` is the window between the first and the last image's first beat
    less the cycles the accelerator waited for image bytes, per image period: with no logit
    held back (``logit_waits == 0``) it is exactly the engine's cycles per image whether or
    not the host kept it fed (None with fewer than two images or when a logit waited). The
    clean periods (nothing starved, nothing held) are each one image's compute time; whether
    any occur depends on how fast the host is."""
    n = int(probes.get("images_started") or 0)
    per = None
    if n >= 2 and not int(probes.get("logit_waits") or 0):
        per = (int(probes["window"]) - int(probes["starved"])) / (n - 1)
    return (probes.get("clean_min"), probes.get("clean_max"), probes.get("clean_count"), per)


def cycles_agree(probes, predicted):
    """True when every engine cycle figure of the probes equals ``predicted``: the
    window figure (when defined) and every clean period (when any); and at least one of
    them is defined."""
    cmin, cmax, count, per = engine_cycles(probes)
    figures = ([per] if per is not None else []) + ([cmin, cmax] if count else [])
    return bool(figures) and all(f == predicted for f in figures)
