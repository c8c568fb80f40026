"""Ablation of the attention ops that stay at inference (issue #11, artifact version 2).

Usage::

    python benchmarks/bench_attention_ablation.py [--seeds 0,1,2] [--dataset digits]
        [--data-dir DIR] [--preset P] [--method sal] [--epochs N]
        [--variants baseline,eca,dynconv,nlsam] [--eca all] [--dynconv last] [--nlsam first]

Trains the preset (default: the data set's) once per variant and seed with the normal
recipe (:func:`models.train.train_model`) and prints, per variant: float and integer test
accuracy (mean and min over the seeds), the QAT accuracy's mean, MACs per image and stored
parameters of the exported integer model (``Model.macs_per_image`` and the op table's
``params()``) and what the variant adds to the baseline, and the mean training seconds.

Variants (placement per option, BLOCKS as ``0,1``, ``all``, ``first``, ``last`` or ``mid``):

- ``baseline``: the preset as is (version-1 artifact);
- ``eca``: ECA channel attention at the end of ``--eca`` blocks (default ``all``);
- ``dynconv``: the ``--dynconv`` blocks' 1x1 convs dynamic, ``--dyn-kernels`` kernels,
  attention pooled every ``--dyn-step`` pixels (default ``last``, K 4, t 2);
- ``nlsam``: NL-SAM spatial attention at the end of ``--nlsam`` blocks (default ``mid``:
  block ``(blocks - 1) // 2``, the first of digits-s, the second of mnist-s).

MNIST: ``--dataset mnist --data-dir ../shared/data/mnist`` (minutes per model).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from shiftacc.models.nets import DEFAULT_PRESET, PRESETS
from shiftacc.models.ops import OPS
from shiftacc.models.train import train_model

VARIANTS = ("baseline", "eca", "dynconv", "nlsam")


def blocks(spec, n):
    """Block indices of a placement spec for a preset of ``n`` blocks."""
    named = {"all": range(n), "first": [0], "last": [n - 1], "mid": [(n - 1) // 2]}
    if spec in named:
        return [int(i) for i in named[spec]]
    return [int(t) for t in spec.split(",")]


def params_of(model):
    """Stored parameters of an integer model (the op table's count, as ``shiftacc info``)."""
    return sum(OPS[layer.op].params(layer) for layer in model.layers)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--preset", default=None)
    ap.add_argument("--method", default="sal")
    ap.add_argument("--epochs", type=int, default=None, help="default: the data set's recipe")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--eca", default="all")
    ap.add_argument("--dynconv", default="last")
    ap.add_argument("--nlsam", default="mid")
    ap.add_argument("--dyn-kernels", type=int, default=4)
    ap.add_argument("--dyn-step", type=int, default=2)
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    preset = args.preset or DEFAULT_PRESET[args.dataset]
    nb = len(PRESETS[preset].blocks)
    placements = {"baseline": {},
                  "eca": {"eca": blocks(args.eca, nb)},
                  "dynconv": {"dynconv": blocks(args.dynconv, nb),
                              "dyn_kernels": args.dyn_kernels, "dyn_step": args.dyn_step},
                  "nlsam": {"nlsam": blocks(args.nlsam, nb)}}
    variants = args.variants.split(",")
    for v in variants:
        if v not in placements:
            ap.error(f"unknown variant {v!r} (known: {', '.join(VARIANTS)})")
    print(f"# {args.dataset}, preset {preset}, method {args.method}, epochs "
          f"{args.epochs or 'recipe'}, seeds {seeds}", flush=True)
    rows = {}
    for v in variants:
        res = []
        for seed in seeds:
            t0 = time.time()
            _, model = train_model(args.dataset, method=args.method, preset=preset,
                                   epochs=args.epochs, seed=seed, data_dir=args.data_dir,
                                   progress=False, attention=placements[v] or None)
            p = model.provenance
            res.append((p["float_accuracy"], p["qat_accuracy"], p["int_accuracy"],
                        p["train_seconds"], model.macs_per_image(), params_of(model)))
            print(f"  {v:<9} seed {seed}: float {p['float_accuracy']:.4f} qat "
                  f"{p['qat_accuracy']:.4f} int {p['int_accuracy']:.4f} "
                  f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        rows[v] = np.array(res, dtype=np.float64)
    base = rows.get("baseline")
    print(f"{'variant':<9} {'placement':<22} {'float mean':>10} {'float min':>9} "
          f"{'qat mean':>8} {'int mean':>8} {'int min':>7} {'MACs/img':>9} {'+MACs':>7} "
          f"{'params':>7} {'+params':>7} {'train s':>7}")
    for v, r in rows.items():
        place = " ".join(f"{k}={','.join(map(str, x)) if isinstance(x, list) else x}"
                         for k, x in placements[v].items()) or "-"
        dm = "" if base is None else f"{int(r[0, 4] - base[0, 4]):+d}"
        dp = "" if base is None else f"{int(r[0, 5] - base[0, 5]):+d}"
        print(f"{v:<9} {place:<22} {r[:, 0].mean():>10.4f} {r[:, 0].min():>9.4f} "
              f"{r[:, 1].mean():>8.4f} {r[:, 2].mean():>8.4f} {r[:, 2].min():>7.4f} "
              f"{int(r[0, 4]):>9} {dm:>7} {int(r[0, 5]):>7} {dp:>7} {r[:, 3].mean():>7.1f}")


if __name__ == "__main__":
    main()
