"""Golden-model throughput beside PyTorch float evaluation, on the same batch.

Usage::

    python benchmarks/bench_golden.py [MODEL.npz] [--images N] [--repeat R]

A digits network is trained briefly (grouped, few epochs) first: the float side needs the
network, and without MODEL.npz its export is the golden side's artifact too.
Prints images/s of: the NumPy golden model (exact integers), the PyTorch integer evaluation
(int64), and the PyTorch float network (fake quantization off), and the golden/float ratio.
The three are timed in turn within each repetition (so that load from other processes hits
them alike) and each keeps its best repetition. The golden logits are checked equal to the
PyTorch integer evaluation's on the same batch.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch


from shiftacc.models import golden
from shiftacc.models.artifact import load_artifact
from shiftacc.models.int_eval import run_int
from shiftacc.models.nets import to_input
from shiftacc.models.quant import set_qat
from shiftacc.models.train import train_model


def rates(fns, n, repeat):
    """Images/s of each function: best of ``repeat`` runs, the functions timed in turn."""
    for fn in fns:
        fn()  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return [n / b for b in best]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="artifact (default: train a quick one)")
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    net, model = train_model(method="grouped", epochs=8, progress=False)
    if args.model:  # the float side needs a network: same topology, trained above
        model = load_artifact(args.model)
    h, w, c = model.input_shape
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.images, h, w, c)).astype(np.uint8)
    set_qat(net, False)
    net.eval()
    x = to_input(images)

    def float_eval():
        with torch.no_grad():
            net(x)

    exact = np.array_equal(golden.run(model, images), run_int(model, images))
    g, i, f = rates([lambda: golden.run(model, images), lambda: run_int(model, images),
                     float_eval], args.images, args.repeat)
    print(f"model {model.name}: {model.macs_per_image()} MACs/image, batch {args.images}, "
          f"torch threads {torch.get_num_threads()}, golden threads {golden.default_threads()}")
    print(f"golden (NumPy, exact)  : {g:12.0f} images/s   (== PyTorch integer eval: "
          f"{'yes' if exact else 'NO'})")
    print(f"PyTorch integer eval   : {i:12.0f} images/s")
    print(f"PyTorch float eval     : {f:12.0f} images/s")
    print(f"golden / float ratio   : {g / f:12.3f}")


if __name__ == "__main__":
    main()
