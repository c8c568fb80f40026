"""``shiftacc generate`` and ``shiftacc sim``: the hardware side of the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..hw.plan import PlanError, load_config, plan_network
from ..hw.stream import beats_per_pixel
from ..models.artifact import ArtifactError, load_artifact
from .cli_model import add_image_args, images_from_args

__all__ = ["register", "memories", "summary"]


def _fail(msg, status=2):
    print(f"shiftacc: error: {msg}", file=sys.stderr)
    return status


def register(sub):
    """Add ``generate`` and ``sim`` to the CLI's subparsers."""
    g = sub.add_parser("generate", help="emit the Verilog accelerator and its summary",
                       description="Plan a dataflow accelerator for an artifact's topology, "
                                   "emit its Verilog top and a summary (summary.json + .txt).")
    g.add_argument("model", help="artifact (.npz)")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--config", help="parallelism config JSON (max_multipliers, radius, layers)")
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("sim", help="run the accelerator in cocotb and compare with golden",
                       description="Simulate the generated accelerator on images in cocotb "
                                   "(Verilator or Icarus) and compare every logit with the "
                                   "golden model. Exit status 1 when any logit differs.")
    s.add_argument("model", help="artifact (.npz)")
    add_image_args(s)
    s.add_argument("--simulator", choices=["verilator", "icarus"], default="verilator")
    s.add_argument("--config", help="parallelism config JSON")
    s.add_argument("--json", help="write results to this JSON file")
    s.add_argument("--waves", action="store_true", help="record a waveform (FST) of the run")
    s.add_argument("--limit", type=int, help="only the first N images")
    s.add_argument("--protocol", action="store_true",
                   help="drive every stream from Python cycle by cycle with random stalls "
                        "(slow; default is the fast bulk path)")
    s.add_argument("--stall-level", type=int, default=0,
                   help="bulk path: idle/backpressure probability x/256 (default 0, which "
                        "measures steady-state cycles)")
    s.add_argument("--batch", type=int, default=64, help="images per bulk command")
    s.add_argument("--seed", type=int, help="random seed (printed when not given)")
    s.add_argument("--workdir", help="keep job, logs and waveforms here")
    s.add_argument("--progress", action="store_true",
                   help="show a progress bar even when stderr is not a terminal")
    s.set_defaults(func=cmd_sim)


def memories(model, plan):
    """On-chip memories of the design (name, depth, width in bits), from the plan."""
    out = []
    for n, st in enumerate(plan.stages):
        h, w, c = st.in_shape
        if st.kind == "conv":
            layer = model.layers[st.layer]
            nbi, nbo = beats_per_pixel(layer.cin, st.lanes_in), beats_per_pixel(layer.cout,
                                                                                 st.lanes_out)
            out.append((f"{st.name}.weights", nbi * nbo, st.lanes_in * st.lanes_out *
                        model.weight_bits))
            out.append((f"{st.name}.bias", nbo, st.lanes_out * 32))
            if st.requant:
                out.append((f"{st.name}.m_sh", nbo, st.lanes_out * (16 + 6)))
        elif st.kind == "shift":
            rows = 1 << (2 * plan.radius + 1).bit_length()
            out.append((f"{st.name}.line_buffer", rows * w * beats_per_pixel(c, st.lanes_in),
                        st.lanes_in * st.bits_in))
        elif st.kind == "maxpool":
            out.append((f"{st.name}.row_buffer", (w // 2) * beats_per_pixel(c, st.lanes_in),
                        st.lanes_in * st.bits_in))
        if st.fifo_depth:
            out.append((f"{st.name}.fifo", st.fifo_depth, st.lanes_out * st.bits_out + 1))
    return out


def summary(model, plan):
    """The generate summary as a JSON-able dict."""
    mems = memories(model, plan)
    return {
        "model": model.name,
        "input": list(model.input_shape),
        "layers": [{"index": i, "op": l.op,
                    "in_shape": list(model.shapes()[i]), "out_shape": list(model.shapes()[i + 1])}
                   for i, l in enumerate(model.layers)],
        "parallelism": {str(k): v for k, v in plan.layer_lanes().items()},
        "memories": [{"name": n, "depth": d, "width": w, "bits": d * w} for n, d, w in mems],
        "memory_bits": sum(d * w for _, d, w in mems),
        **plan.to_dict(),
    }


def _load(args):
    model = load_artifact(args.model)
    cfg = load_config(args.config)
    plan = plan_network(model, cfg)
    return model, cfg, plan


def cmd_generate(args):
    try:
        model, cfg, plan = _load(args)
    except (ArtifactError, PlanError) as e:
        return _fail(str(e))
    from amaranth.back import verilog

    from ..hw.top import Accelerator, param_words
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(plan.summary_text(model))
    print("[generate] elaborating and emitting Verilog ...", flush=True)
    text = verilog.convert(Accelerator(model, plan), name="shiftacc_top")
    (out / "shiftacc_top.v").write_text(text)
    summ = summary(model, plan)
    (out / "summary.json").write_text(json.dumps(summ, indent=1))
    (out / "summary.txt").write_text(plan.summary_text(model) + "\n")
    from ..hw.params import PARAM_BYTES
    words = param_words(model, plan)
    (out / "params.bin").write_bytes(b"".join(w.to_bytes(PARAM_BYTES, "little") for w in words))
    print(f"[generate] wrote {out / 'shiftacc_top.v'} ({len(text.splitlines())} lines), "
          f"summary.json, summary.txt, params.bin ({len(words)} parameter beats)")
    return 0


def cmd_sim(args):
    try:
        model, cfg, plan = _load(args)
    except (ArtifactError, PlanError) as e:
        return _fail(str(e))
    try:
        images, labels = images_from_args(args, model)
    except (ValueError, FileNotFoundError, OSError) as e:
        return _fail(str(e))
    from ..models import golden
    try:
        golden.check_images(model, images)
    except ValueError as e:
        return _fail(str(e))
    if images.ndim == 3:
        images = images[..., None]
    if args.limit:
        images = images[:args.limit]
        labels = None if labels is None else labels[:args.limit]
    from ..sim.runner import SimulatorMissing, simulate
    test = "protocol_run" if args.protocol else "fast_run"
    try:
        res = simulate(model, images, model_path=args.model, config=cfg,
                       simulator=args.simulator, test=test, batch_images=args.batch,
                       stall_level=args.stall_level, seed=args.seed, waves=args.waves,
                       workdir=args.workdir, progress=sys.stderr.isatty() or args.progress)
    except SimulatorMissing as e:
        return _fail(str(e))
    except RuntimeError as e:
        return _fail(str(e), 3)
    out = {
        "logits": res["logits"],
        "golden_mismatches": res["golden_mismatches"],
        "cycles_per_image": res.get("cycles_per_image"),
        "predicted_cycles_per_image": plan.predicted_cycles_per_image,
        "ideal_cycles_per_image": plan.ideal_cycles_per_image,
        "multipliers": plan.multipliers,
        "macs_per_image": plan.macs_per_image,
        "sim_cycles": res["sim_cycles"],
        "sim_wall_seconds": res["sim_wall_seconds"],
        "simulator": args.simulator,
        "test": test,
        "seed": res["seed"],
        "images": len(images),
    }
    if out["cycles_per_image"]:
        out["mac_efficiency"] = plan.macs_per_image / (plan.multipliers * out["cycles_per_image"])
    if labels is not None:
        pred = np.argmax(np.asarray(res["logits"]), axis=1)
        out["accuracy"] = float(np.mean(pred == np.asarray(labels)))
    if "first_mismatch" in res:
        out["first_mismatch"] = res["first_mismatch"]
    if "waveform" in res:
        out["waveform"] = res["waveform"]
    if res["golden_mismatches"] and not args.waves:
        k = res["first_mismatch"]["image"]
        print(f"[sim] recording a waveform of failing image {k} ...")
        try:
            wres = simulate(model, images[k:k + 1], model_path=args.model, config=cfg,
                            simulator=args.simulator, test="fast_run", batch_images=1,
                            seed=res["seed"], waves=True, workdir=Path(res["workdir"]) / "fail")
            out["waveform"] = wres.get("waveform")
        except RuntimeError as e:
            print(f"[sim] could not record the waveform: {e}", file=sys.stderr)
    _report(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out))
    return 1 if out["golden_mismatches"] else 0


def _report(out):
    n = out["images"]
    rate = out["sim_cycles"] / max(out["sim_wall_seconds"], 1e-9)
    print(f"[sim] {n} images on {out['simulator']} ({out['test']}): "
          f"{out['golden_mismatches']} mismatching images vs golden")
    if out.get("cycles_per_image"):
        print(f"[sim] cycles/image measured {out['cycles_per_image']:.1f}, predicted "
              f"{out['predicted_cycles_per_image']}, ideal {out['ideal_cycles_per_image']:.1f}; "
              f"MAC efficiency {out['mac_efficiency']:.3f} ({out['multipliers']} multipliers)")
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
