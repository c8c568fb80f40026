"""Run many random networks through the whole-accelerator testbench and tabulate the results.

Each network has random widths (including channel counts no lane count divides), random
shifts, stride-2 and maxpool placements, 4- or 8-bit activations and 2..8-bit weights, and a
random multiplier budget; random images run through the bulk path with random stalls, then
again without stalls to measure steady-state cycles per image (a stalled run reports only its
cycles per image with the pipeline fill included, never a steady-state figure).

Usage::

    python benchmarks/random_networks.py [--count 8] [--images 40] [--seed 1]
                                         [--simulator verilator] [--attention]

``--attention`` adds the version-2 ops (``channel_attention``, ``spatial_attention``,
``dynamic_conv1x1``): each network takes a random non-empty subset at random positions, with
random k, K, t and random table contents.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


from shiftacc.hw.plan import load_config, plan_network
from shiftacc.models.artifact import save_artifact
from shiftacc.sim.runner import simulate
from shiftacc.models.netgen import ATTENTION_OPS, random_model


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--simulator", default="verilator")
    ap.add_argument("--divisible", action="store_true",
                    help="only widths that are multiples of 4 (and a budget that keeps P | C)")
    ap.add_argument("--attention", action="store_true",
                    help="place the version-2 attention ops too (a random subset per network)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-random-"))
    print(f"seed {args.seed}")
    print("| net | layers | act/w bits | mults | stalled run | cycles/img under stalls (fill "
          "incl.) | cycles/img meas. | pred. | ideal | MAC eff. |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    total_bad = 0
    for k in range(args.count):
        rng = np.random.default_rng(args.seed * 1000 + k)
        size = (int(rng.integers(5, 13)), int(rng.integers(5, 13)))
        attention = ()
        if args.attention:
            attention = tuple(op for op in ATTENTION_OPS if rng.random() < 0.6) or \
                (ATTENTION_OPS[int(rng.integers(0, 3))],)
        model = random_model(rng, size=size, in_channels=int(rng.choice([1, 2, 3])),
                             blocks=int(rng.integers(1, 4)),
                             width_multiple=4 if args.divisible else 1, attention=attention)
        path = tmp / f"net{k}.npz"
        model = save_artifact(path, model)
        cfg = load_config(overrides={"max_multipliers": int(rng.integers(16, 200))})
        plan = plan_network(model, cfg)
        images = rng.integers(0, 256, (args.images,) + model.input_shape).astype(np.uint8)
        stalled = simulate(model, images, model_path=path, config=cfg, simulator=args.simulator,
                           batch_images=args.images, stall_level=int(rng.integers(32, 160)),
                           seed=k, workdir=tmp / f"s{k}", log=lambda *a: None)
        clean = simulate(model, images, model_path=path, config=cfg, simulator=args.simulator,
                         batch_images=args.images, stall_level=0, seed=k,
                         workdir=tmp / f"c{k}", log=lambda *a: None)
        bad = stalled["golden_mismatches"] + clean["golden_mismatches"]
        total_bad += bad
        cpi = clean["cycles_per_image"]
        short = {"conv1x1": "c", "replicate": "r", "shift": "s", "maxpool2": "p", "gap": "g",
                 "channel_attention": "ECA", "spatial_attention": "SAM",
                 "dynamic_conv1x1": "dyn"}
        ops = "-".join(short[l.op] + ("/2" if l.stride == 2 and l.op.endswith("conv1x1")
                                      else "") for l in model.layers)
        print(f"| {k} | {ops} {size[0]}x{size[1]}x{model.input_shape[2]} | "
              f"{model.act_bits}/{model.weight_bits} | {plan.multipliers} | "
              f"{stalled['golden_mismatches']} mismatches | "
              f"{stalled['cycles_per_image_stalled']:.1f} | {cpi:.1f} | "
              f"{plan.predicted_cycles_per_image} | {plan.ideal_cycles_per_image:.1f} | "
              f"{plan.macs_per_image / (plan.multipliers * cpi):.3f} |", flush=True)
    print(f"\n{args.count} networks x {args.images} images x 2 runs: {total_bad} mismatching "
          f"images")
    return 1 if total_bad else 0


if __name__ == "__main__":
    sys.exit(main())
