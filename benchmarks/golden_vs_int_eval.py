"""Golden model vs PyTorch integer evaluation, per shift-selection method.

Trains each method with the CLI defaults (or takes artifacts given on the command line),
then counts mismatching logits between :func:`models.golden.run` and
:func:`models.int_eval.run_int` over the digits test split and 1,000 random images, and
prints the float and integer accuracies beside them.

Usage::

    python benchmarks/golden_vs_int_eval.py [MODEL.npz ...] [--seed 0]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch


from shiftacc.models import golden
from shiftacc.models.data import load_split
from shiftacc.models.int_eval import run_int
from shiftacc.models.shift import METHODS


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    models = []
    if args.models:
        from shiftacc.models.artifact import load_artifact
        models = [load_artifact(p) for p in args.models]
    else:
        from shiftacc.models.train import train_model
        for method in METHODS:
            t0 = time.perf_counter()
            _, model = train_model(method=method, seed=args.seed, progress=False)
            model.provenance["wall_seconds"] = round(time.perf_counter() - t0, 1)
            models.append(model)
    x, y = load_split("digits", "test")
    r = np.random.default_rng(12345).integers(0, 256, (1000, 8, 8, 1)).astype(np.uint8)
    print("| method | float acc | int acc | train wall s | mismatching logits (test split) "
          "| (1,000 random) | zero shifts |")
    print("|---|---|---|---|---|---|---|")
    total = 0
    for m in models:
        p = m.provenance
        a = int((golden.run(m, x) != run_int(m, x)).sum())
        b = int((golden.run(m, r) != run_int(m, r)).sum())
        total += a + b
        zero = p.get("zero_shift_fraction")
        print(f"| {p.get('method')} | {p.get('float_accuracy'):.4f} | "
              f"{p.get('int_accuracy'):.4f} | {p.get('wall_seconds', '-')} | {a} of "
              f"{x.shape[0] * len(m.classes)} | {b} of {1000 * len(m.classes)} | "
              f"{'-' if zero is None else f'{zero:.3f}'} |")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
