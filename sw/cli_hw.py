"""``shiftacc generate``, ``shiftacc sim`` and ``shiftacc cache``: the hardware side of the CLI.

The options are declared in :mod:`shiftacc.sw.cli`; the functions here run the commands and
raise the errors of :mod:`shiftacc.sw.errors` (mapped to exit statuses by ``main``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..hw.plan import load_config, plan_network
from ..models.artifact import load_artifact
from .cli_model import hardware_images, progress_wanted
from .errors import Mismatch, Stalled, UsageError
from .outputs import check_output, check_output_dir, same_file, write_atomic

__all__ = ["memories", "summary", "cmd_generate", "cmd_sim", "cmd_cache", "GENERATED_FILES",
           "engine_plan", "overlay_config_from_args", "overlay_summary"]

#: The files ``generate`` writes into its folder (summary.json last: it marks completion).
GENERATED_FILES = ("shiftacc_top.v", "summary.txt", "params.bin", "summary.json")


def memories(model, plan):
    """On-chip memories of the design (name, depth, width in bits); see :mod:`hw.report`."""
    from ..hw.report import memories as _memories
    return _memories(model, plan)


def summary(model, plan):
    """The generate summary as a JSON-able dict; see :mod:`hw.report`."""
    from ..hw.report import summary as _summary
    return _summary(model, plan)


def _load(args):
    model = load_artifact(args.model)
    cfg, plan = engine_plan(args, model)
    return model, cfg, plan


def overlay_config_from_args(args):
    """The ``OverlayConfig`` of ``--overlay-config`` (inline JSON object or a file), then
    ``--lanes`` / ``--requant-units``, validated.

    Raises
    ------
    UsageError
        Unreadable JSON, an unknown field, or a value out of range (the config's own words).
    """
    import dataclasses
    from ..hw.overlay_program import OverlayConfig
    fields = {}
    text = getattr(args, "overlay_config", None)
    if text:
        source = "--overlay-config"
        if not text.lstrip().startswith("{"):
            try:
                text, source = Path(text).read_text(), f"--overlay-config {text}"
            except OSError as e:
                raise UsageError(f"--overlay-config {text}: cannot read it ({e.strerror}); "
                                 f"give a JSON file or an inline object such as "
                                 f"'{{\"lanes\": 8}}'") from None
        try:
            fields = json.loads(text)
        except ValueError as e:
            raise UsageError(f"{source} is not valid JSON ({e})") from None
        if not isinstance(fields, dict):
            raise UsageError(f"{source} must be a JSON object of OverlayConfig fields, got "
                             f"{type(fields).__name__}")
    for name in ("lanes", "requant_units"):
        value = getattr(args, name, None)
        if value is not None:
            fields[name] = value
    known = [f.name for f in dataclasses.fields(OverlayConfig)]
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise UsageError(f"unknown overlay config field(s) {', '.join(unknown)}; known: "
                         f"{', '.join(known)}")
    try:
        config = OverlayConfig(**fields)
        config.validate()
    except (ValueError, TypeError) as e:
        raise UsageError(f"bad overlay config: {e}") from None
    return config


def engine_plan(args, model):
    """The plan ``--engine`` asks for: ``(config, plan)``.

    ``dataflow`` (default): the planner's config (``--config``) and
    :func:`~shiftacc.hw.plan.plan_network`. ``overlay``: the ``OverlayConfig`` of
    :func:`overlay_config_from_args` and ``hw.overlay_program.compile_overlay``.

    Raises
    ------
    UsageError
        An option of the other engine (``--config`` with the overlay; ``--overlay-config``,
        ``--lanes``, ``--requant-units`` with the dataflow engine), a bad overlay config, or
        a model the overlay compiler refuses (its words: the layer and why).
    PlanError
        The dataflow planner refuses the topology or the config.
    """
    engine = resolve_engine(args, model)
    overlay_opts = [f"--{name.replace('_', '-')}" for name in
                    ("overlay_config", "lanes", "requant_units")
                    if getattr(args, name, None) is not None]
    board = _board(args)
    if board is not None:
        return _board_plan(args, model, board, engine, overlay_opts)
    if engine == "dataflow":
        if overlay_opts:
            raise UsageError(f"{', '.join(overlay_opts)} configure the overlay engine; add "
                             f"--engine overlay (or drop them for the dataflow engine)")
        cfg = load_config(getattr(args, "config", None))
        return cfg, plan_network(model, cfg)
    if engine != "overlay":
        raise UsageError(f"unknown --engine {engine!r}: dataflow or overlay")
    if getattr(args, "config", None):
        raise UsageError(f"--config {args.config} is the dataflow planner's parallelism "
                         f"config; the overlay engine takes --overlay-config, --lanes and "
                         f"--requant-units")
    from ..hw.overlay_program import OverlayFitError, compile_overlay
    config = overlay_config_from_args(args)
    try:
        plan = compile_overlay(model, config)
    except OverlayFitError as e:
        raise UsageError(f"the model does not fit the overlay engine: {e}") from None
    return config, plan


def resolve_engine(args, model=None):
    """``--engine`` of ``sim``/``serve`` made concrete (``args.engine`` set, and returned).

    Given: as given. Not given (None): with ``--board``, the engine ``shiftacc build --board``
    chooses there (:func:`shiftacc.sw.cli_build.choose_engine`; overlay options alone mean
    the overlay, as for ``build``), so ``sim``/``serve --board icebreaker`` simulate what the
    iCEBreaker build places; without ``--board``, ``dataflow``.
    """
    engine = getattr(args, "engine", None)
    if engine:
        return engine
    board = _board(args)
    if board is None:
        engine = "dataflow"
    elif any(getattr(args, name, None) is not None
             for name in ("overlay_config", "lanes", "requant_units")):
        engine = "overlay"
    else:
        from ..models.artifact import load_artifact
        from .cli_build import choose_engine
        if model is None:
            model = load_artifact(args.model)
        choice = choose_engine(model, board)
        engine = choice.engine
        _say(args)(f"[{args.command}] {board.name}: engine {engine} ({choice.reason})")
    args.engine = engine
    return engine


def _board(args):
    """The board of ``--board`` (None without it).

    Raises
    ------
    UsageError
        An unknown board name.
    """
    name = getattr(args, "board", None)
    if not name:
        return None
    from ..boards.registry import UnknownBoard, find_board
    try:
        return find_board(name)
    except UnknownBoard as e:
        raise UsageError(str(e)) from None


def _board_plan(args, model, board, engine, overlay_opts):
    """``--board``: the plan ``shiftacc build --board`` places on that board, by the build's
    own code (``sw.cli_build``): with ``--engine overlay`` the board's overlay config (on the
    iCEBreaker the UP5K config: 8 lanes, R = 1, 256 channel/gather rows, 8 program rows, the
    ice40 primitives, simulated on Yosys's own cell models), with the dataflow engine the
    device-aware planner's plan. ``--overlay-config``, ``--lanes`` and ``--requant-units``
    override the board's choices as they do for ``build``."""
    from . import cli_build
    say = _say(args)
    if getattr(args, "config", None):
        raise UsageError("--board chooses the plan as 'shiftacc build --board' does; drop "
                         "--config (or --board)")
    if engine == "overlay":
        plan = cli_build._overlay_plan(args, model, board, lambda *a, **k: None)
        say(f"[{args.command}] {board.name}: the overlay config 'build --board {board.name} "
            f"--engine overlay' places: {plan.config.to_json()}")
        return plan.config, plan
    if overlay_opts:
        raise UsageError(f"{', '.join(overlay_opts)} configure the overlay engine; add "
                         f"--engine overlay (or drop them for the dataflow engine)")
    plan = cli_build._plan(args, model, board, say)
    return plan.config, plan


def overlay_summary(model, plan):
    """The generate summary of an overlay plan as a JSON-able dict: engine, config, I/O,
    passes, parameter words, multipliers, memories and MACs (and the cycle model's cycles per
    image where ``hw/overlay_timing.py`` is available)."""
    from ..hw.top import param_words
    from . import protocol
    cost = plan.cost()
    mems = [{"name": mem.name, "depth": mem.depth, "width": mem.width,
             "bits": mem.depth * mem.width} for mem in cost.memories]
    try:
        cycles = plan.cycles_per_image()
    except (NotImplementedError, ImportError):
        cycles = None
    desc = protocol.descriptor(model, plan)
    return {
        "model": model.name,
        "engine": "overlay",
        "config": desc["config"],
        "io": desc["io"],
        "design_id": f"{protocol.design_id(desc):016x}",
        "passes": [{k: int(p[k]) for k in _pass_fields()} for p in plan.passes],
        "layers": [list(map(int, lays)) for lays in plan.layers],
        "param_words": len(param_words(model, plan)),
        "multipliers": int(cost.multiplier_count),
        "dsp": {family: int(plan.dsp(family)) for family in ("ice40", "ecp5")},
        "memories": mems,
        "memory_bits": sum(m["bits"] for m in mems),
        "macs_per_image": int(plan.macs_per_image),
        "cycles_per_image": cycles,
    }


def _pass_fields():
    from ..hw.overlay_program import PASS_FIELDS
    return PASS_FIELDS


def _summary_text(model, plan):
    if getattr(plan, "engine", "dataflow") != "overlay":
        return plan.summary_text(model)
    lines = plan.summary()
    return lines if isinstance(lines, str) else "\n".join(lines)


def _say(args):
    """``print`` unless ``-q``."""
    return (lambda *a, **k: None) if getattr(args, "quiet", False) else print


def _check_generate_folder(out, args):
    """Refuse to mix another artifact's generated files with this one's (unless --force).

    Files an earlier ``generate`` wrote for the *same artifact path* are refreshed (the
    retrain-and-regenerate loop); generated files of another artifact, or files with these
    names that ``generate`` did not write (no readable summary.json naming their artifact),
    are replaced only with ``--force``. Inputs are never overwritten, even with --force.
    """
    targets = [out / f for f in GENERATED_FILES]
    for t in targets:
        for src in (args.model, args.config):
            if src is not None and same_file(t, src):
                raise UsageError(f"--out {out}: {t.name} is an input of this command "
                                 f"({src}); choose another folder")
        if t.is_dir():
            raise UsageError(f"--out {out}: {t} is a folder; generate writes a file there")
    existing = [t.name for t in targets if t.exists()]
    if not existing or args.force:
        return
    try:
        previous = json.loads((out / "summary.json").read_text()).get("artifact")
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous and same_file(previous, args.model):
        return
    origin = f"artifact {previous}" if previous else "an unknown source"
    raise UsageError(f"--out {out} already holds {', '.join(existing)} from {origin}; pass "
                     f"--force to replace them, or choose another folder")


def cmd_generate(args):
    """Plan, emit Verilog, summary and parameters into ``--out``.

    Raises
    ------
    UsageError
        Bad folder (checked before any work), another artifact's files there.
    ArtifactError, PlanError
        Bad artifact or config, or a topology the planner refuses.
    """
    out = check_output_dir(args.out, what="--out")
    model, cfg, plan = _load(args)
    _check_generate_folder(out, args)
    from ..hw.params import PARAM_BYTES
    from ..hw.stream import to_verilog
    from ..hw.top import Accelerator, param_words
    say = _say(args)
    overlay = getattr(plan, "engine", "dataflow") == "overlay"
    say(_summary_text(model, plan))
    say("[generate] elaborating and emitting Verilog ...", flush=True)
    if overlay:
        # The overlay engine is built from its config alone (OVERLAY.md §6): the model is
        # only in params.bin (program, gather and weight tables).
        from ..hw.overlay import OverlayEngine
        top = OverlayEngine(plan.config)
    else:
        top = Accelerator(model, plan)
    text = to_verilog(top, name="shiftacc_top")
    summ = overlay_summary(model, plan) if overlay else summary(model, plan)
    summ["artifact"] = str(Path(args.model).resolve())
    words = param_words(model, plan)
    contents = {
        "shiftacc_top.v": text,
        "summary.txt": _summary_text(model, plan) + "\n",
        "params.bin": b"".join(w.to_bytes(PARAM_BYTES, "little") for w in words),
        "summary.json": json.dumps(summ, indent=1),
    }
    out.mkdir(parents=True, exist_ok=True)
    for name in GENERATED_FILES:
        write_atomic(out / name, contents[name])
    print(f"[generate] wrote {out / 'shiftacc_top.v'} ({len(text.splitlines())} lines), "
          f"summary.json, summary.txt, params.bin ({len(words)} parameter beats)")
    return 0


def cmd_sim(args):
    """Simulate the accelerator on images and compare with golden.

    Raises
    ------
    UsageError
        Bad output path or workdir (checked first), bad images.
    Mismatch
        Some logits differ (after the JSON, if asked for, is written).
    Stalled
        The design stopped moving data (the JSON gets the diagnosis).
    MissingTool, BuildFailed, InternalError
        From :func:`shiftacc.sim.runner.simulate`.
    """
    if args.json:
        check_output(args.json, what="--json", inputs=(args.model, args.images, args.config),
                     force=args.force)
    if args.workdir:
        check_output_dir(args.workdir, what="--workdir")
    if resolve_engine(args) == "overlay":
        return _sim_overlay(args)
    if getattr(args, "board", None):
        raise UsageError("--board: 'sim' simulates a board's plan with --engine overlay; for "
                         "a board's dataflow plan use 'shiftacc serve --board' and "
                         "'shiftacc run'")
    model, cfg, plan = _load(args)
    images, labels = hardware_images(args, model)
    from ..sim.runner import simulate
    say = _say(args)
    test = "protocol_run" if args.protocol else "fast_run"
    base = {"simulator": args.simulator, "test": test, "images": len(images),
            "predicted_cycles_per_image": plan.predicted_cycles_per_image,
            "ideal_cycles_per_image": plan.ideal_cycles_per_image,
            "multipliers": plan.multipliers, "macs_per_image": plan.macs_per_image}
    try:
        res = simulate(model, images, model_path=args.model, config=cfg,
                       simulator=args.simulator, test=test, batch_images=args.batch,
                       stall_level=args.stall_level, seed=args.seed, waves=args.waves,
                       workdir=args.workdir, progress=progress_wanted(args), log=say)
    except Stalled as e:
        if args.json and e.result:
            write_atomic(args.json, json.dumps({**base, "stall": e.result.get("stall"),
                                                "seed": e.result.get("seed")}))
        raise
    out = {
        "logits": res["logits"],
        "golden_mismatches": res["golden_mismatches"],
        "cycles_per_image": res.get("cycles_per_image"),
        "sim_cycles": res["sim_cycles"],
        "sim_wall_seconds": res["sim_wall_seconds"],
        "seed": res["seed"],
        "stall_level": args.stall_level,
        **base,
    }
    if res.get("cycles_per_image_stalled") is not None:
        out["cycles_per_image_stalled"] = res["cycles_per_image_stalled"]
    if res.get("first_image_cycles") is not None:
        out["first_image_cycles"] = res["first_image_cycles"]
    if out["cycles_per_image"]:
        out["mac_efficiency"] = plan.macs_per_image / (plan.multipliers * out["cycles_per_image"])
    if labels is not None:
        pred = np.argmax(np.asarray(res["logits"]), axis=1)
        out["accuracy"] = float(np.mean(pred == np.asarray(labels)))
    if "first_mismatch" in res:
        out["first_mismatch"] = res["first_mismatch"]
    if "waveform" in res:
        out["waveform"] = res["waveform"]
    if res["golden_mismatches"]:
        out["workdir"] = res["workdir"]
        if not args.waves:
            k = res["first_mismatch"]["image"]
            say(f"[sim] recording a waveform of failing image {k} ...")
            try:
                wres = simulate(model, images[k:k + 1], model_path=args.model, config=cfg,
                                simulator=args.simulator, test="fast_run", batch_images=1,
                                seed=res["seed"], waves=True,
                                workdir=Path(res["workdir"]) / "fail", log=say)
                out["waveform"] = wres.get("waveform")
            except (RuntimeError, Stalled) as e:
                print(f"[sim] could not record the waveform: {e}", file=sys.stderr)
    _report(out)
    if args.json:
        write_atomic(args.json, json.dumps(out))
    if out["golden_mismatches"]:
        fm = out["first_mismatch"]
        where = f"; waveform {out['waveform']}" if out.get("waveform") else ""
        raise Mismatch(f"{out['golden_mismatches']} of {len(images)} images differ from the "
                       f"golden model (first: image {fm['image']}){where}; run folder "
                       f"{out['workdir']}")
    return 0


def _sim_overlay(args):
    """``sim --engine overlay``: the overlay engine simulated behind the host link.

    The cocotb harness of :mod:`shiftacc.sim.runner` drives the dataflow accelerator's ports
    from a dataflow plan, so the overlay runs as the device ``serve`` simulates
    (:class:`~shiftacc.hw.board.LinkTop` with the ``OverlayEngine``, byte streams, no UART;
    with ``--board`` the board's overlay config and link keywords, as ``build`` places them)
    and the driver loads and streams the images over ``socket://`` in this process
    (:func:`shiftacc.sim.linksim.simulate_link`): every logit is the gateware's, compared with
    the golden model. ``--stall-level`` puts seeded random stalls on the link's byte streams
    (host -> device gaps, device -> host backpressure).

    Cycles per image: the clean periods between consecutive images at the engine's own ports
    (exactly one image's compute; compared with ``hw/overlay_timing``'s prediction), and the
    device's STATUS cycle counter over the batch (what the host sees through the link).

    Raises
    ------
    UsageError
        ``--protocol`` or ``--waves`` (options of the dataflow harness).
    Mismatch
        Some logit differs (after the JSON is written).
    """
    unsupported = [opt for opt, on in (("--protocol", args.protocol),
                                       ("--waves", args.waves)) if on]
    if unsupported:
        raise UsageError(f"{', '.join(unsupported)}: options of the dataflow harness; "
                         f"--engine overlay simulates the engine behind the host link "
                         f"(bulk byte streams, --stall-level for stalls, no waveform)")
    from ..models import golden
    from ..sim.linksim import cycles_agree, engine_cycles, simulate_link
    model, _, plan = _load(args)
    images, labels = hardware_images(args, model)
    say = _say(args)
    seed = args.seed
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (1 << 31))
    if args.stall_level:
        print(f"[sim] random stalls on the link's byte streams: level {args.stall_level}/256, "
              f"seed {seed}")
    board = _board(args)
    # An iCE40 build leaves colliding block-RAM reads undefined (hw.synth.undefined_collisions):
    # simulate that too, so that a design depending on such a read is not reported exact.
    poison = board is not None and board.family == "ice40"
    if poison:
        say(f"[sim] block RAM as the {board.name} build places it: a read of the address "
            f"written in the same cycle returns wrong data")
    res = simulate_link(model, plan, images, simulator=args.simulator,
                        link_kw=board.link_kw(model) if board is not None else None,
                        stall_level=args.stall_level, seed=seed, workdir=args.workdir,
                        progress=progress_wanted(args), log=say,
                        undefined_collisions=poison)
    expected = golden.run(model, images)
    logits = res["logits"]
    diff = np.nonzero(np.any(logits != expected, axis=1))[0]
    n = len(images)
    try:
        predicted = plan.cycles_per_image()
    except NotImplementedError:
        predicted = None
    cmin, cmax, ccount, per = engine_cycles(res["probes"])
    mults = plan.cost().multiplier_count
    link_cpi = res["link_cycles"] / n
    out = {"logits": logits.tolist(), "golden_mismatches": int(len(diff)),
           "images": int(n), "engine": "overlay", "simulator": args.simulator,
           "test": "link", "design_id": f"{res['design_id']:016x}",
           "config": plan.config.to_json() if hasattr(plan.config, "to_json") else None,
           "board": board.name if board is not None else None,
           "undefined_collisions": poison,
           "stall_level": args.stall_level, "seed": seed,
           "predicted_cycles_per_image": predicted,
           "engine_cycles_per_image_min": cmin, "engine_cycles_per_image_max": cmax,
           "engine_clean_periods": ccount, "engine_window_cycles_per_image": per,
           "link_cycles_per_image": link_cpi,
           "ideal_cycles_per_image": plan.macs_per_image / mults,
           "multipliers": mults, "macs_per_image": int(plan.macs_per_image),
           "probes": res["probes"], "sim_cycles": res["link_cycles"],
           "sim_wall_seconds": res["wall_seconds"]}
    # The engine's own cycles per image (window less starved cycles, or the clean periods)
    # when they agree; else the host's figure through the link.
    engine = per if per is not None else (cmin if ccount and cmin == cmax else None)
    cpi = engine or link_cpi
    out["engine_cycles_per_image"] = engine
    out["engine_cycles_match_prediction"] = cycles_agree(res["probes"], predicted)
    out["cycles_per_image"] = cpi
    out["mac_efficiency"] = plan.macs_per_image / (mults * cpi) if cpi else None
    if labels is not None:
        out["accuracy"] = float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))
    if len(diff):
        k = int(diff[0])
        out["first_mismatch"] = {"image": k, "hardware": logits[k].tolist(),
                                 "golden": expected[k].tolist()}
    where = f" on the {board.name} config" if board is not None else ""
    print(f"[sim] {n} images on {args.simulator} (overlay engine behind the link{where}, "
          f"{plan.config.lanes} lanes, R {plan.config.requant_units}, "
          f"{plan.config.primitives} primitives): {len(diff)} mismatching images vs golden")
    clean = (f"{cmin}" if cmin == cmax else f"{cmin}..{cmax}") if ccount else "none"
    print(f"[sim] engine cycles/image: clean periods {clean} over {ccount} image pairs, "
          f"window less starved {per if per is None else round(per, 1)}; predicted "
          f"{predicted} (hw/overlay_timing)")
    if args.stall_level:
        p = res["probes"]
        print(f"[sim] stalls held {p.get('rx_stalls')} host->device and "
              f"{p.get('tx_stalls')} device->host byte-cycles back; the engine waited "
              f"{p.get('starved')} cycles for image bytes, logits {p.get('logit_waits')} "
              f"cycles for the link")
    print(f"[sim] link cycles/image (device STATUS counter, images through the link"
          f"{', under stalls' if args.stall_level else ', back to back'}) {link_cpi:.1f}; "
          f"ideal {out['ideal_cycles_per_image']:.1f}; MAC efficiency "
          f"{out['mac_efficiency']:.3f} ({mults} multipliers)")
    print(f"[sim] {res['link_cycles']} cycles in {res['wall_seconds']:.2f} s wall")
    if "accuracy" in out:
        print(f"[sim] accuracy {out['accuracy']:.4f}")
    if "first_mismatch" in out:
        fm = out["first_mismatch"]
        print(f"[sim] first mismatch: image {fm['image']}: hardware {fm['hardware']} "
              f"golden {fm['golden']}")
    if args.json:
        write_atomic(args.json, json.dumps(out))
    if len(diff):
        raise Mismatch(f"{len(diff)} of {n} images differ from the golden model "
                       f"(first: image {int(diff[0])})")
    return 0


def cmd_cache(args):
    """``shiftacc cache info|clear``: list or remove the simulator builds."""
    from . import cache
    root = cache.cache_root()
    if args.action == "clear":
        n, size = cache.clear()
        print(f"removed {n} builds ({size / 1e6:.1f} MB) from {root}")
        return 0
    try:
        limit = cache.max_bytes()
    except ValueError as e:
        raise UsageError(str(e)) from None
    entries = cache.builds()
    import time
    print(f"cache {root}: {len(entries)} builds, "
          f"{sum(b['bytes'] for b in entries) / 1e6:.1f} MB of {limit / 1e6:.0f} MB "
          f"(SHIFTACC_CACHE_MAX_MB); least recently used first:")
    for b in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(b["last_use"]))
        state = "" if b["complete"] else "  (incomplete)"
        print(f"  {b['path'].name:<40} {b['bytes'] / 1e6:8.1f} MB  last used {when}{state}")
    return 0


def _report(out):
    n = out["images"]
    rate = out["sim_cycles"] / max(out["sim_wall_seconds"], 1e-9)
    print(f"[sim] {n} images on {out['simulator']} ({out['test']}): "
          f"{out['golden_mismatches']} mismatching images vs golden")
    if out.get("cycles_per_image"):
        print(f"[sim] cycles/image measured {out['cycles_per_image']:.1f}, predicted "
              f"{out['predicted_cycles_per_image']}, ideal {out['ideal_cycles_per_image']:.1f}; "
              f"MAC efficiency {out['mac_efficiency']:.3f} ({out['multipliers']} multipliers)")
    elif out.get("cycles_per_image_stalled"):
        print(f"[sim] under stalls (level {out['stall_level']}/256): "
              f"{out['cycles_per_image_stalled']:.1f} cycles/image including each batch's "
              f"pipeline fill (stall-free prediction {out['predicted_cycles_per_image']}; "
              f"--stall-level 0 measures the steady state)")
    print(f"[sim] {out['sim_cycles']} cycles in {out['sim_wall_seconds']:.2f} s wall "
          f"= {rate:,.0f} cycles/s")
    if "accuracy" in out:
        print(f"[sim] accuracy {out['accuracy']:.4f}")
    fm = out.get("first_mismatch")
    if fm:
        print(f"[sim] first mismatch: image {fm['image']}: hardware {fm['hardware']} "
              f"golden {fm['golden']}")
        d = fm.get("divergence")
        if d:
            print(f"[sim] first differing layer: {json.dumps(d)}")
    if out.get("waveform"):
        print(f"[sim] waveform: {out['waveform']}")
