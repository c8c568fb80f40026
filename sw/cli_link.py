"""``shiftacc serve`` and ``shiftacc run``: the host link from the command line.

``serve`` simulates the board top and serves it on a TCP socket (:mod:`shiftacc.sim.serve`);
``run`` opens a device by pyserial URL (a board's serial port or ``socket://`` of ``serve``),
loads the parameters, streams images and compares every logit with the golden model
(:class:`shiftacc.sw.device.Device`). Both report errors through the CLI's one ladder.
"""

from __future__ import annotations

import json
import socket
import sys
import time

import numpy as np

from ..models.artifact import load_artifact
from .cli_hw import _board, engine_plan
from .cli_model import hardware_images, progress_wanted
from .errors import Mismatch, UsageError
from .outputs import check_output, write_atomic

__all__ = ["cmd_serve", "cmd_run"]


def _say(args):
    return (lambda *a, **k: None) if args.quiet else (
        lambda msg: print(msg, file=sys.stderr, flush=True))


def _check_port_free(host, port):
    """Refuse a port another program listens on before spending minutes on a build."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UsageError(f"cannot listen on {host}:{port} ({e.strerror}): another program "
                             f"uses it (an earlier 'shiftacc serve'?); choose another with "
                             f"--port") from None


def _board_clock(args, board):
    """Fill ``--clock-hz`` and ``--baud`` when not given: ``--board``'s link clock (its
    PLL's output as ``build`` generates it, divided by the board's ``link_clock_ratio``: what
    the board's UART divides and IDENTIFY reports) and line rate, else 12 MHz and 3 Mbaud."""
    if args.clock_hz is None:
        args.clock_hz = 12_000_000
        if board is not None:
            from ..boards.pll import PLLError, pll_for_family
            try:
                pll = pll_for_family(board.family, board.oscillator_hz,
                                     board.target_mhz * 1e6)
            except PLLError as e:
                raise UsageError(f"{board.name}: {e}") from None
            args.clock_hz = int(round((pll.f_out_hz if pll else board.oscillator_hz)
                                      / board.link_clock_ratio))
    if args.baud is None:
        args.baud = int(board.baud) if board is not None else 3_000_000


def cmd_serve(args):
    """Simulate the board top and serve it on a TCP socket until Ctrl-C.

    Raises
    ------
    UsageError
        The port is taken, the artifact or config is bad, --baud does not divide the clock
        into at least 4 cycles per bit, the engine options do not go together or the model
        does not fit the overlay (:func:`shiftacc.sw.cli_hw.engine_plan`).
    MissingTool, BuildFailed, InternalError
        From :func:`shiftacc.sim.serve.serve`.
    """
    board = _board(args)
    _board_clock(args, board)
    if args.uart and args.clock_hz < 4 * args.baud:
        raise UsageError(f"--clock-hz {args.clock_hz} gives {args.clock_hz / args.baud:.2f} "
                         f"clocks per bit at --baud {args.baud}; the UART needs at least 4")
    model = load_artifact(args.model)
    cfg, plan = engine_plan(args, model)
    _check_port_free(args.host, args.port)
    from ..sim.serve import serve
    from . import protocol
    desc = protocol.descriptor(model, plan)
    say = _say(args)
    if protocol.plan_engine(plan) == "overlay":
        io = desc["io"]
        what = (f"overlay engine ({plan.config.lanes} lanes, {plan.config.requant_units} "
                f"requant units, {plan.config.primitives} primitives) for every model with "
                f"input {io['input']}, {io['input_bits']}-bit, {io['classes']} classes")
    else:
        what = f"dataflow accelerator of {args.model}"
    if board is not None:
        what += f", as 'shiftacc build --board {board.name}' places it"

    def on_ready(host, port):
        line = "UART at {:,} baud, {:,} Hz clock".format(args.baud, args.clock_hz) \
            if args.uart else "byte stream (no UART)"
        print(f"serving the {what} on socket://{host}:{port} ({args.simulator}, {line}, "
              f"design id {protocol.design_id(desc):016x}); Ctrl-C stops", flush=True)

    serve(model, config=cfg, plan=plan, host=args.host, port=args.port,
          simulator=args.simulator, uart=args.uart, clock_hz=args.clock_hz, baud=args.baud,
          on_ready=on_ready, log=say, max_clients=args.max_clients,
          link_kw=board.link_kw(model) if board is not None else None,
          # An iCE40 build leaves colliding block-RAM reads undefined: simulate that too.
          undefined_collisions=board is not None and board.family == "ice40")
    print(f"served {args.max_clients} client session(s); stopped", flush=True)
    return 0


def _open(args, say):
    """Open ``--port``, retrying for up to ``--wait`` seconds while it cannot be opened."""
    from .device import Device, LinkError
    deadline = time.monotonic() + max(0.0, args.wait)
    announced = False
    while True:
        try:
            return Device.open(args.port, timeout=args.timeout, baudrate=args.baud,
                               retries=args.retries)
        except LinkError:
            if time.monotonic() >= deadline:
                raise
            if not announced:
                say(f"[run] waiting up to {args.wait:.0f} s for {args.port} ...")
                announced = True
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def cmd_run(args):
    """Load the model into the device at ``--port``, stream the images, compare with golden.

    Raises
    ------
    UsageError
        Bad artifact, images or output path; the device's design does not match the model
        (:class:`~shiftacc.sw.device.DesignMismatch`, naming the difference).
    Mismatch
        Some logit differs from the golden model (after the JSON is written).
    LinkError
        The device could not be opened, stopped answering, or refused a frame.
    """
    if args.json:
        check_output(args.json, what="--json", inputs=(args.model, args.images),
                     force=args.force)
    model = load_artifact(args.model)
    images, labels = hardware_images(args, model)
    say = _say(args)
    progress = progress_wanted(args)
    t_start = time.perf_counter()
    with _open(args, say) as dev:
        ident = dev.identify()
        say(f"[run] {args.port}: {ident.engine} design {ident.design_id:016x}, link "
            f"v{ident.link_version}, {ident.clock_hz:,} Hz, "
            + (f"{ident.baud:,} baud" if ident.baud else "byte stream"))
        dev.plan_for(model)
        loading = dev.status()
        load = dev.load(model, progress=progress)
        say(f"[run] loaded {ident.param_words} parameter words in {load['seconds']:.2f} s")
        before = dev.status()
        t0 = time.perf_counter()
        logits = dev.infer(images, progress=progress)
        wall = time.perf_counter() - t0
        after = dev.status()
        stats = dev.stats()
    from ..models import golden
    expected = golden.run(model, images)
    logits = np.asarray(logits, dtype=np.int64)
    diff = np.nonzero(np.any(logits != expected, axis=1))[0]
    out = {
        "logits": logits.tolist(),
        "golden_mismatches": int(len(diff)),
        "images": int(len(images)),
        "images_per_second": len(images) / wall if wall > 0 else None,
        "link_bytes": int(stats["bytes_sent"] + stats["bytes_received"]),
        "link_seconds": time.perf_counter() - t_start,
        "design_id": f"{ident.design_id:016x}",
        "engine": ident.engine,
        "retries": int(stats["retries"]),
        "baud": ident.baud,
        "clock_hz": ident.clock_hz,
        "param_load_seconds": load["seconds"],
        "device_cycles": int(after["cycles"] - before["cycles"]),
    }
    # Device-clock figures: what the board itself achieves, whatever the host or the
    # simulator's speed (a simulated board runs far slower than its clock in wall time).
    out["device_images_per_second"] = (len(images) * ident.clock_hz / out["device_cycles"]
                                       if out["device_cycles"] else None)
    out["param_load_device_seconds"] = (before["cycles"] - loading["cycles"]) / ident.clock_hz
    if ident.baud:
        # Image payload over what the line could carry while the device ran the batch
        # (device clock, so it is the line's figure, not the host's or the simulator's).
        capacity = out["device_cycles"] / ident.clock_hz * ident.baud / 10
        out["link_efficiency"] = len(images) * ident.image_bytes / capacity if capacity else None
    if labels is not None:
        out["accuracy"] = float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))
    if len(diff):
        k = int(diff[0])
        c = int(np.nonzero(logits[k] != expected[k])[0][0])
        out["first_mismatch"] = {"image": k, "class": c, "device": int(logits[k, c]),
                                 "golden": int(expected[k, c])}
    _report(out)
    if args.json:
        write_atomic(args.json, json.dumps(out))
    if len(diff):
        fm = out["first_mismatch"]
        raise Mismatch(f"{len(diff)} of {len(images)} images differ from the golden model "
                       f"(first: image {fm['image']}, class {fm['class']}: device "
                       f"{fm['device']}, golden {fm['golden']})")
    return 0


def _report(out):
    line = (f"{out['images']} images, {out['golden_mismatches']} mismatches vs golden, "
            f"{out['images_per_second']:.1f} images/s (device clock: "
            f"{out['device_images_per_second']:.0f} images/s, parameters loaded in "
            f"{out['param_load_device_seconds'] * 1e3:.1f} ms)")
    if out.get("link_efficiency") is not None:
        line += f", link efficiency {out['link_efficiency']:.3f} at {out['baud']:,} baud"
    if "accuracy" in out:
        line += f", accuracy {out['accuracy']:.4f}"
    line += f", {out['retries']} retries"
    print(line, flush=True)
