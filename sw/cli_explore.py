"""``shiftacc explore`` and ``shiftacc regress``: many builds or simulations as Ray tasks.

``explore`` sweeps (board, engine, multiplier budget, nextpnr seed) points of one model, each
a Ray task that plans, builds (as ``shiftacc build``) and optionally simulates a few images;
rows go to ``DIR/results.json``/``.csv`` as they finish, ``ok`` rows are reused by the next
run, and the images/s vs LUT and vs DSP Pareto fronts are printed at the end.

``regress`` simulates N random networks against the golden model, one Ray task each; a
failing network's files and replay command are kept under ``DIR/failures/<seed>/``.

Both run on an embedded Ray instance (all of this machine's CPUs) unless ``--address`` names
a cluster; ``--serial`` runs the same work in this process, one point after another.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from .errors import BuildFailed, Mismatch, UsageError
from .outputs import check_output_dir

__all__ = ["cmd_explore", "cmd_regress", "explore", "regress", "parse_list"]

#: Test hook: ``WORD,XOR`` corrupts parameter word WORD of every regression network (the
#: testbench then sees logits that differ from golden), to prove a fault is caught.
CORRUPT_ENV = "SHIFTACC_REGRESS_CORRUPT"


def _say(args):
    quiet = getattr(args, "quiet", False)
    return (lambda *a, **k: None) if quiet else (lambda *a, **k: print(*a, **k,
                                                                         file=sys.stderr))


def parse_list(text, what, kind=str):
    """``a,b,c`` -> list (``kind`` applied); a bad item is a usage error naming ``what``."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise UsageError(f"{what}: give at least one value")
    try:
        out = [kind(t) for t in items]
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not a comma-separated list of "
                         f"{'integers' if kind is int else 'names'}") from None
    if kind is int and any(v < 1 for v in out):
        raise UsageError(f"{what}: every value must be >= 1")
    return out


def _bar(total, desc, args):
    from tqdm import tqdm
    show = not getattr(args, "quiet", False) and (getattr(args, "progress", False)
                                                    or sys.stderr.isatty())
    return tqdm(total=total, desc=desc, unit="pt", file=sys.stderr, disable=not show)


def _fmt(v, spec=""):
    if v is None or v == "":
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return format(v, spec or ".4g")
    return str(v)


def pareto_text(rows):
    """The Pareto fronts of images/s against LUTs and against DSP blocks, as printed text
    (empty when no row has the figures)."""
    from . import explore as ex  # (imported here: it pulls in Ray's helpers lazily)
    text = ""
    for res in ("LUT", "DSP"):
        front = ex.pareto(rows, res)
        if front:
            text += f"\nPareto front, images/s vs {res}:\n"
            text += _table(front, (("key", "POINT", ""), (f"{res}_used", res, ""),
                                   ("images_per_second", "IMG/S", ".0f"),
                                   ("fmax_mhz", "FMAX", ".1f"),
                                   ("multipliers", "MULT", ""))) + "\n"
    return text


def _table(rows, cols):
    """A plain text table of ``rows`` (dicts): ``cols`` is ((key, header, format), ...)."""
    cells = [[_fmt(r.get(k), f) for k, _, f in cols] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h, _) in enumerate(cols)]
    lines = ["  ".join(h.ljust(w) for (_, h, _), w in zip(cols, widths)).rstrip()]
    for c in cells:
        lines.append("  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip())
    return "\n".join(lines)


_ROW_COLS = (("key", "POINT", ""), ("status", "STATUS", ""), ("multipliers", "MULT", ""),
             ("DSP_used", "DSP", ""), ("LUT_used", "LUT", ""), ("FF_used", "FF", ""),
             ("RAM_used", "RAM", ""), ("fmax_mhz", "FMAX", ".1f"), ("timing_met", "MET", ""),
             ("cycles_per_image", "CYC/IMG", ""), ("images_per_second", "IMG/S", ".0f"),
             ("mac_efficiency", "MAC EFF", ".3f"), ("wall_seconds", "WALL S", ".0f"))


# ---- explore --------------------------------------------------------------------------------

def explore(model_path, out, points, *, bitstream=True, sim_images=0, timeout=3600.0,
            executor="ray", address=None, cpus_per_task=1, progress=None, say=None,
            echo=None):
    """Run ``points`` of ``model_path`` into ``out`` (resuming), return (rows, reused, info).

    ``rows`` are this run's points' rows, in ``points`` order; ``reused`` how many came from an
    earlier run; ``info`` has ``wall_seconds``, ``executor``, ``cpus``.
    """
    from . import explore as ex
    say = say or (lambda *a, **k: None)
    echo = echo or say
    model_path = Path(model_path)
    data = model_path.read_bytes()
    store = ex.ResultStore(out, {"model": str(model_path.resolve()),
                                 "model_sha256": hashlib.sha256(data).hexdigest()})
    from ..boards.registry import find_board
    todo, reused = [], 0
    for p in points:
        b = find_board(p.board)
        want = {"bitstream": bool(bitstream and b.bitstream), "sim_images": int(sim_images)}
        if store.reusable(p.key, **want):
            reused += 1
        else:
            todo.append(p)
    if reused:
        say(f"[explore] {reused} of {len(points)} points reused from {out / 'results.json'} "
            f"(finished ok in an earlier run); {len(todo)} to run")
    env = ex.task_env()
    calls = [(p.key, (p.to_dict(), data, str(Path(out).resolve())),
              {"bitstream": bitstream, "sim_images": sim_images, "timeout": timeout,
               "env": env}) for p in todo]
    started, cpus = False, 1
    if executor == "ray" and todo:
        started = ex.connect(address, num_cpus=os.cpu_count())
        cpus = ex.cluster_cpus()
        say(f"[explore] Ray: {cpus} CPUs ({'embedded' if address is None else address}), "
            f"{cpus_per_task} per point, {len(todo)} points")
    t0 = time.monotonic()

    def done(tag, row):
        store.add(row)
        msg = row.get("message") or ""
        line = f"[explore] {row['key']}: {row['status']}"
        if row["status"] == "ok":
            line += (f", {row.get('multipliers')} multipliers, "
                     + (f"Fmax {row['fmax_mhz']:.1f} MHz, " if row.get("fmax_mhz") else "")
                     + f"{row['cycles_per_image']} cycles/image, {row['wall_seconds']} s")
        else:
            line += f": {msg.splitlines()[0][:160] if msg else ''}"
        (progress.write if progress is not None and not progress.disable else echo)(line)

    def died(tag, exc):
        p = next(q for q in todo if q.key == tag)
        row = ex._blank_row(p, bitstream)
        row.update(status="failed", message=f"the task died: {type(exc).__name__}: {exc}")
        done(tag, row)
    try:
        if progress is not None:
            progress.total = len(todo)
            progress.refresh()
        ex.run_tasks(ex.run_point, calls, on_result=done, on_error=died, executor=executor,
                     cpus_per_task=cpus_per_task, progress=progress)
    finally:
        if progress is not None:
            progress.close()
        ex.disconnect(started)
    info = {"wall_seconds": time.monotonic() - t0, "executor": executor, "cpus": cpus,
            "ran": len(todo)}
    rows = [store.rows[p.key] for p in points if p.key in store.rows]
    return rows, reused, info


def cmd_explore(args):
    """``shiftacc explore``: see the module docstring."""
    from . import explore as ex
    from ..boards.registry import UnknownBoard, find_board
    say = _say(args)
    model = Path(args.model)
    if not model.is_file():
        raise UsageError(f"{model}: no such artifact")
    boards = parse_list(args.boards, "--boards")
    try:
        for b in boards:
            find_board(b)
    except UnknownBoard as e:
        raise UsageError(str(e)) from None
    boards = [find_board(b).name for b in boards]
    budgets = parse_list(args.budgets, "--budgets", int)
    engines = parse_list(args.engines, "--engines")
    for e in engines:
        if e not in ex.ENGINES:
            raise UsageError(f"--engines: unknown engine {e!r}; known: {', '.join(ex.ENGINES)}")
    if "overlay" in engines and not ex.overlay_available():
        say("[explore] the overlay engine is not in this build of shiftacc yet: its points "
            "are recorded as refused")
    seeds = list(range(1, args.seeds + 1))
    if args.no_bitstream and len(seeds) > 1:
        say("[explore] --no-bitstream: nextpnr does not run, so seeds make no difference; "
            "one seed per point")
        seeds = [1]
    out = check_output_dir(args.out or f"explore-{model.stem}", what="--out")
    points = ex.expand_points(boards, engines, budgets, seeds, args.freq)
    executor = "serial" if args.serial else "ray"
    bar = _bar(len(points), "explore", args)
    rows, reused, info = explore(model, out, points, bitstream=not args.no_bitstream,
                                 sim_images=args.sim_images, timeout=args.timeout,
                                 executor=executor, address=args.address,
                                 cpus_per_task=args.cpus_per_task, progress=bar, say=say)
    print(_table(rows, _ROW_COLS))
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "refused", "failed")}
    ran = (f"{info['ran']} run in {info['wall_seconds']:.1f} s ({info['executor']}, "
           f"{info['cpus']} CPUs)" if info["ran"] else "nothing to run")
    print(f"\n{len(rows)} points: {counts['ok']} ok, {counts['refused']} refused, "
          f"{counts['failed']} failed; {reused} reused, {ran}; "
          f"results in {out / 'results.csv'} and {out / 'results.json'}")
    print(pareto_text(rows), end="")
    if counts["failed"]:
        first = next(r for r in rows if r["status"] == "failed")
        raise BuildFailed(f"{counts['failed']} of {len(rows)} points failed (rows kept in "
                          f"{out / 'results.csv'}); first: {first['key']}: "
                          f"{(first['message'] or '').splitlines()[0][:300]}")
    return 0


# ---- regress --------------------------------------------------------------------------------

_REG_COLS = (("seed", "SEED", ""), ("status", "STATUS", ""), ("layers", "LAYERS", ""),
             ("shape", "INPUT", ""), ("act_bits", "A", ""), ("weight_bits", "W", ""),
             ("multipliers", "MULT", ""), ("stalled_mismatches", "BAD(STALL)", ""),
             ("mismatches", "BAD", ""), ("predicted_cycles_per_image", "PRED CYC", ""),
             ("measured_cycles_per_image", "MEAS CYC", ".1f"),
             ("mac_efficiency", "MAC EFF", ".3f"), ("wall_seconds", "WALL S", ".0f"))


_REG_COLS_OVERLAY = (_REG_COLS[:7] + (("draws", "DRAWS", ""),) + _REG_COLS[7:10]
                     + (("measured_cycles_per_image", "MEAS CYC", ""),
                        ("stall_level", "STALL", ""),
                        ("stalled_cycles_per_image", "LINK CYC(STALL)", ".1f"),
                        ("link_cycles_per_image", "LINK CYC", ".1f"))
                     + _REG_COLS[11:])


def _regress_overlay_args(args):
    """``regress --engine overlay``: ``{"config": fields, "board": name}`` (None for the
    dataflow engine).

    Raises
    ------
    UsageError
        Overlay options without ``--engine overlay``, unreadable JSON, an unknown board or
        a bad config.
    """
    engine = getattr(args, "engine", "dataflow") or "dataflow"
    given = [f"--{k.replace('_', '-')}" for k in ("overlay_config", "board")
             if getattr(args, k, None)]
    if engine != "overlay":
        if given:
            raise UsageError(f"{', '.join(given)}: options of --engine overlay")
        return None
    if args.attention:
        raise UsageError("--attention places version-2 ops, which the overlay refuses; drop "
                         "one of them")
    from types import SimpleNamespace
    from .cli_hw import _board, overlay_config_from_args
    fields = {}
    text = args.overlay_config
    if text:
        # The same reading as sim/serve (inline JSON or a file), checked by OverlayConfig.
        overlay_config_from_args(SimpleNamespace(overlay_config=text, lanes=None,
                                                 requant_units=None))
        if not text.lstrip().startswith("{"):
            text = Path(text).read_text()
        fields = json.loads(text)
    board = _board(args)
    return {"config": fields, "board": board.name if board is not None else None}


def regress(out, seeds, *, images=8, simulator="verilator", attention=False, max_size=12,
            max_width=20, max_blocks=3, executor="ray", address=None, cpus_per_task=1,
            corrupt_param=None, progress=None, say=None, echo=None, engine="dataflow",
            overlay=None):
    """Simulate the regression networks ``seeds``; return (rows, info). ``engine="overlay"``:
    each network compiled for the overlay ``overlay`` (see
    :func:`shiftacc.sw.explore.regress_network`)."""
    from . import explore as ex
    say = say or (lambda *a, **k: None)
    echo = echo or say
    store = ex.ResultStore(out, {"command": "regress"}, columns=ex.REGRESS_COLUMNS, key="seed")
    store.rows = {}
    env = ex.task_env()
    calls = [(s, (s, str(Path(out).resolve())),
              {"images": images, "simulator": simulator, "attention": attention,
               "max_size": max_size, "max_width": max_width, "max_blocks": max_blocks,
               "env": env, "corrupt_param": corrupt_param, "engine": engine,
               "overlay": overlay}) for s in seeds]
    started, cpus = False, 1
    if executor == "ray":
        started = ex.connect(address, num_cpus=os.cpu_count())
        cpus = ex.cluster_cpus()
        say(f"[regress] Ray: {cpus} CPUs, {len(seeds)} networks")
    t0 = time.monotonic()

    def done(tag, row):
        store.add(row)
        if row["status"] not in ("ok", "refused"):
            line = (f"[regress] network {row['seed']}: {row['status']}: {row['message']}; "
                    f"kept in {row['failure_dir']}"
                    + (f"; replay: {row['replay']}" if row.get("replay") else ""))
            (progress.write if progress is not None and not progress.disable else echo)(line)

    def died(tag, exc):
        row = dict.fromkeys(ex.REGRESS_COLUMNS)
        row.update(seed=tag, status="failed", message=f"the task died: {exc}")
        done(tag, row)
    try:
        if progress is not None:
            progress.total = len(seeds)
            progress.refresh()
        ex.run_tasks(ex.regress_network, calls, on_result=done, on_error=died,
                     executor=executor, cpus_per_task=cpus_per_task, progress=progress)
    finally:
        if progress is not None:
            progress.close()
        ex.disconnect(started)
    info = {"wall_seconds": time.monotonic() - t0, "executor": executor, "cpus": cpus}
    return [store.rows[str(s)] for s in seeds if str(s) in store.rows], info


def cmd_regress(args):
    """``shiftacc regress``: see the module docstring."""
    say = _say(args)
    overlay = _regress_overlay_args(args)
    out = check_output_dir(args.out or f"regress-{args.seed}", what="--out")
    corrupt = None
    raw = os.environ.get(CORRUPT_ENV)
    if raw:
        try:
            word, xor = (int(v, 0) for v in raw.split(","))
        except ValueError:
            raise UsageError(f"{CORRUPT_ENV}={raw!r}: give WORD,XOR") from None
        corrupt = (word, xor)
        say(f"[regress] {CORRUPT_ENV}: parameter word {word} corrupted (XOR {xor:#x}) in every "
            f"network: every network must be reported")
    seeds = [args.seed * 1000 + k for k in range(args.count)]
    bar = _bar(len(seeds), "regress", args)
    bar.unit = "net"
    rows, info = regress(out, seeds, images=args.images, simulator=args.simulator,
                         attention=args.attention, max_size=args.max_size,
                         max_width=args.max_width, max_blocks=args.max_blocks,
                         executor="serial" if args.serial else "ray", address=args.address,
                         cpus_per_task=args.cpus_per_task, corrupt_param=corrupt,
                         progress=bar, say=say, engine=args.engine, overlay=overlay)
    print(_table(rows, _REG_COLS_OVERLAY if overlay is not None else _REG_COLS))
    bad = [r for r in rows if r["status"] != "ok"]
    wrong = sum(int(r.get("mismatches") or 0) + int(r.get("stalled_mismatches") or 0)
                for r in rows)
    refused = [r for r in rows if r["status"] == "refused"]
    bad = [r for r in bad if r["status"] != "refused"]
    if overlay is not None:
        exact = sum(1 for r in rows if r["status"] == "ok")
        print(f"\noverlay {overlay}: {exact} networks exact with engine cycles/image == "
              f"predicted, {len(refused)} refused (no fitting draw), "
              f"{sum(int(r.get('draws') or 0) - 1 for r in rows if r.get('draws'))} refused "
              f"draws drawn again")
    print(f"\n{len(rows)} networks x {args.images} images x 2 runs (under stalls, then "
          f"without): {wrong} mismatching images, {len(bad)} failing networks; "
          f"{info['wall_seconds']:.1f} s ({info['executor']}, {info['cpus']} CPUs); "
          f"rows in {out / 'results.csv'}")
    if bad:
        for r in bad:
            print(f"  network {r['seed']}: {r['status']}: {r['message']}\n"
                  f"    kept in {r['failure_dir']}\n    replay: {r.get('replay') or '-'}")
        raise Mismatch(f"{len(bad)} of {len(rows)} networks failed against the golden model "
                       f"(kept under {out / 'failures'})")
    return 0
