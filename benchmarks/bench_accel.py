"""Whole-network simulation figures: cycles/s on the fast and protocol paths, and measured vs
predicted vs ideal cycles per image (MAC efficiency).

Usage::

    python benchmarks/bench_accel.py MODEL.npz [--images 360] [--protocol-images 4]
                                     [--config PAR.json] [--simulator verilator]

Without MODEL it uses a random network of the digits shape (8x8x1). Both paths run in one
invocation so their ratio is measured on the same machine load.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np


from shiftacc.hw.plan import load_config, plan_network
from shiftacc.models.artifact import load_artifact, save_artifact
from shiftacc.sim.runner import simulate


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--images", type=int, default=360)
    ap.add_argument("--protocol-images", type=int, default=4)
    ap.add_argument("--config")
    ap.add_argument("--simulator", default="verilator")
    ap.add_argument("--dataset", default="digits")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-accel-"))
    if args.model:
        path = Path(args.model)
        model = load_artifact(path)
    else:
        from shiftacc.models.netgen import random_model
        model = random_model(np.random.default_rng(7), size=(8, 8), blocks=2)
        path = tmp / "random.npz"
        model = save_artifact(path, model)
    if model.input_shape == (8, 8, 1) and args.dataset == "digits":
        from shiftacc.models.data import load_split
        images, _ = load_split("digits", "test")
    else:
        images = np.random.default_rng(0).integers(0, 256, (args.images,) + model.input_shape)
    images = np.asarray(images, np.uint8)[:args.images]
    cfg = load_config(args.config)
    plan = plan_network(model, cfg)
    print(plan.summary_text(model))
    fast = simulate(model, images, model_path=path, config=cfg, simulator=args.simulator,
                    batch_images=64, stall_level=0, seed=1,
                    workdir=tmp / "fast")
    prot = simulate(model, images[:args.protocol_images], model_path=path, config=cfg,
                    simulator=args.simulator, test="protocol_run", p_stall=0.0, seed=1,
                    workdir=tmp / "protocol")
    f_rate = fast["sim_cycles"] / fast["sim_wall_seconds"]
    p_rate = prot["sim_cycles"] / prot["sim_wall_seconds"]
    cpi = fast["cycles_per_image"]
    print()
    print("| figure | value |\n|---|---|")
    print(f"| images (fast path) | {len(images)} |")
    print(f"| golden mismatches (fast / protocol) | {fast['golden_mismatches']} / "
          f"{prot['golden_mismatches']} |")
    print(f"| fast path: simulated cycles/s | {f_rate:,.0f} ({fast['sim_cycles']} cycles in "
          f"{fast['sim_wall_seconds']:.2f} s) |")
    print(f"| protocol TB: simulated cycles/s | {p_rate:,.0f} ({prot['sim_cycles']} cycles in "
          f"{prot['sim_wall_seconds']:.2f} s) |")
    print(f"| fast / protocol speed ratio | {f_rate / p_rate:.1f} |")
    print(f"| measured cycles/image (steady state) | {cpi:.2f} |")
    print(f"| predicted cycles/image (model) | {plan.predicted_cycles_per_image} "
          f"({100 * (cpi / plan.predicted_cycles_per_image - 1):+.2f} %) |")
    print(f"| ideal cycles/image (MACs/multipliers) | {plan.ideal_cycles_per_image:.2f} |")
    print(f"| multipliers | {plan.multipliers} |")
    print(f"| MAC efficiency (measured) | "
          f"{plan.macs_per_image / (plan.multipliers * cpi):.4f} |")


if __name__ == "__main__":
    main()
