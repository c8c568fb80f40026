"""Training throughput of the shift network vs a plain 3x3-conv network of the same width.

Usage::

    python benchmarks/bench_train_speed.py [--preset mnist-s] [--batch 128] [--steps 30]
                                           [--repeat 3] [--threads 1]

Both networks have the same topology and widths (the preset's stem, blocks, pooling and
strides); the conv network replaces every block's ``shift + 1x1 conv`` by a ``3x3 conv``
(9x the block MACs). Three networks are timed on random images of the preset's input size,
in one process, interleaved (``--repeat`` rounds, best round kept) so that load from other
processes hits them alike:

- ``sal (search)``: the SAL shift net with soft attention over the 9 candidate shifts (the
  most expensive phase of training: one depthwise 3x3 per block),
- ``shift (hard)``: the same net with one integer shift per channel (fine-tune and QAT
  phases without the fake quantizers; ``grouped`` trains like this throughout),
- ``conv3x3``: the plain convolutional net.

A step is forward, backward and an AdamW step on a batch, with the thread count the trainer
uses (one, see ``models/train.py``). Prints images/s of each and the ratios to conv3x3.
"""

import argparse
import time

import torch
from torch import nn

from shiftacc.models.nets import make_net
from shiftacc.models.shift import candidates


def conv_net(cfg):
    """The plain CNN with ``cfg``'s topology: 3x3 convs where the shift net has shift + 1x1."""
    h, w, c = cfg.in_shape
    layers = [nn.Conv2d(c, cfg.stem, 3, padding=1), nn.BatchNorm2d(cfg.stem), nn.ReLU()]
    if cfg.stem_down == "pool":
        layers.append(nn.MaxPool2d(2))
    c = cfg.stem
    for cout, down in cfg.blocks:
        layers += [nn.Conv2d(c, cout, 3, stride=2 if down == "stride" else 1, padding=1),
                   nn.BatchNorm2d(cout), nn.ReLU()]
        if down == "pool":
            layers.append(nn.MaxPool2d(2))
        c = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, cfg.classes)]
    return nn.Sequential(*layers)


def step_fn(net, x, y):
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    lossf = nn.CrossEntropyLoss()

    def step():
        loss = lossf(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def time_steps(step, n):
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mnist-s")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sal = make_net(args.preset, "sal")
    hard = make_net(args.preset, "grouped")
    cfg = sal.cfg
    conv = conv_net(cfg).to(memory_format=torch.channels_last)
    h, w, c = cfg.in_shape
    x = torch.rand(args.batch, c, h, w).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, cfg.classes, (args.batch,))
    nets = {"sal (search)": sal, "shift (hard)": hard, "conv3x3": conv}
    steps = {k: step_fn(n.train(), x, y) for k, n in nets.items()}
    for s in steps.values():  # warm-up: allocator, oneDNN primitives
        time_steps(s, 3)
    best = {k: float("inf") for k in steps}
    for _ in range(args.repeat):
        for k, s in steps.items():
            best[k] = min(best[k], time_steps(s, args.steps))
    macs = {"sal (search)": sal_macs(cfg), "shift (hard)": shift_macs(cfg),
            "conv3x3": conv_macs(cfg)}
    print(f"preset {args.preset}, input {h}x{w}x{c}, batch {args.batch}, {args.steps} steps x "
          f"{args.repeat} rounds (best), {args.threads} thread(s)")
    ips = {k: args.steps * args.batch / t for k, t in best.items()}
    for k in steps:
        print(f"  {k:<13} {ips[k]:8.0f} images/s   {macs[k] / 1e6:6.2f} M MAC/image (forward)")
    print(f"ratio sal (search) / conv3x3: {ips['sal (search)'] / ips['conv3x3']:.2f}x images/s")
    print(f"ratio shift (hard) / conv3x3: {ips['shift (hard)'] / ips['conv3x3']:.2f}x images/s")


def _walk(cfg, per_block):
    h, w, c = cfg.in_shape
    total = h * w * 9 * c * cfg.stem
    if cfg.stem_down == "pool":
        h, w = h // 2, w // 2
    c = cfg.stem
    for cout, down in cfg.blocks:
        if down == "stride":
            h, w = -(-h // 2), -(-w // 2)
        total += per_block(h, w, c, cout)
        if down == "pool":
            h, w = h // 2, w // 2
        c = cout
    return total + c * cfg.classes


def shift_macs(cfg):
    return _walk(cfg, lambda h, w, c, o: h * w * c * o)


def sal_macs(cfg):  # + the depthwise mix of the 9 candidates
    k = len(candidates(cfg.radius))
    return _walk(cfg, lambda h, w, c, o: h * w * c * (o + k))


def conv_macs(cfg):
    return _walk(cfg, lambda h, w, c, o: h * w * c * o * 9)


if __name__ == "__main__":
    main()
