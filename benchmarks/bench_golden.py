"""Golden-model throughput beside PyTorch float evaluation, on the same batch.

Usage::

    python benchmarks/bench_golden.py [MODEL.npz] [--images N] [--repeat R]

Without a model, a default digits network is trained briefly (grouped, few epochs) first.
Prints images/s of: the NumPy golden model (exact integers), the PyTorch integer evaluation
(int64), and the PyTorch float network (fake quantization off), and the golden/float ratio.
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


def rate(fn, n, repeat):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="artifact (default: train a quick one)")
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
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

    g = rate(lambda: golden.run(model, images), args.images, args.repeat)
    i = rate(lambda: run_int(model, images), args.images, args.repeat)
    f = rate(float_eval, args.images, args.repeat)
    print(f"model {model.name}: {model.macs_per_image()} MACs/image, batch {args.images}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"golden (NumPy int64)   : {g:12.0f} images/s")
    print(f"PyTorch integer eval   : {i:12.0f} images/s")
    print(f"PyTorch float eval     : {f:12.0f} images/s")
    print(f"golden / float ratio   : {g / f:12.3f}")


if __name__ == "__main__":
    main()
