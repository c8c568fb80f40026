"""``shiftacc train`` with ``--threads 1`` and ``--threads 2``: wall time and identical artifacts.

Usage::

    python benchmarks/bench_train_threads.py [--threads 1 2] [--repeat R] [--epochs E]
                                             [--method M] [--seed S]

Runs the real command (a fresh process each time, so imports and data loading count) for
each thread count in turn within every repetition, so that load from other processes hits
them alike. Prints every run's wall time, then per thread count the best and median, the
``train_seconds`` of the provenance and the accuracies, and whether every artifact array
(and the manifest, ``train_seconds`` aside) is identical across all the runs. Exit status 1
if any artifact differs.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLI = "import sys; from shiftacc.sw.cli import main; sys.exit(main())"


def load(path):
    """(manifest without train_seconds, {name: array}) of an artifact file."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "manifest"}
        manifest = json.loads(bytes(z["manifest"]).decode())
    secs = manifest["provenance"].pop("train_seconds")
    for key in ("wall_seconds", "images_per_second"):  # timings too
        manifest["provenance"].pop(key, None)
    return manifest, arrays, secs


def same(a, b):
    return (a[0] == b[0] and a[1].keys() == b[1].keys()
            and all(np.array_equal(a[1][k], b[1][k]) for k in a[1]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--method", default="sal")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    walls = {t: [] for t in args.threads}
    arts = {t: [] for t in args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeat):
            for t in args.threads:
                out = Path(tmp) / f"t{t}-r{rep}.npz"
                cmd = [sys.executable, "-c", CLI, "train", "--dataset", "digits", "--out",
                       str(out), "--threads", str(t), "--epochs", str(args.epochs), "--method",
                       args.method, "--seed", str(args.seed), "--quiet"]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                walls[t].append(time.perf_counter() - t0)
                arts[t].append(load(out))
                print(f"repeat {rep} --threads {t}: {walls[t][-1]:.1f} s wall", flush=True)
    ref = arts[args.threads[0]][0]
    for t in args.threads:
        m = arts[t][0][0]["provenance"]
        print(f"--threads {t}: wall best {min(walls[t]):.1f} s, median "
              f"{statistics.median(walls[t]):.1f} s; train_seconds "
              f"{[a[2] for a in arts[t]]}; float {m['float_accuracy']:.4f}, "
              f"integer {m['int_accuracy']:.4f}")
    identical = all(same(ref, a) for t in args.threads for a in arts[t])
    print(f"artifacts identical across all runs and thread counts: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
