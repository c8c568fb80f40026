"""``shiftacc train``, ``shiftacc golden`` and ``shiftacc info``: the model side of the CLI.

Also exports :func:`add_image_args` and :func:`images_from_args` so that other subcommands
(``shiftacc sim``) take images exactly the same way.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

__all__ = ["register", "add_image_args", "images_from_args"]


def add_image_args(parser):
    """Add ``--dataset`` / ``--images`` (mutually exclusive) and ``--data-dir`` to a parser."""
    from ..models.data import DATASETS
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--dataset", choices=DATASETS,
                   help="use this data set's test split (labels known, accuracy reported)")
    g.add_argument("--images", metavar="IMAGES.npy",
                   help="uint8 array [N, H, W, C] (or [N, H, W] for one channel)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="folder with MNIST/FashionMNIST/CIFAR-10 in torchvision's layout")


def images_from_args(args, model):
    """Images (and labels when known) selected by :func:`add_image_args`'s flags.

    Parameters
    ----------
    args : argparse.Namespace
    model : Model
        The images must match its input shape and bits.

    Returns
    -------
    images : ndarray of uint8 [N, H, W, C]
    labels : ndarray of int64 [N] or None
        The test split's labels for ``--dataset``, None for ``--images``.

    Raises
    ------
    ValueError
        Neither flag given, unreadable/mis-shaped images, missing data folder.
    """
    from ..models.data import load_images_npy, load_split
    if getattr(args, "images", None):
        return load_images_npy(args.images, model), None
    if getattr(args, "dataset", None):
        images, labels = load_split(args.dataset, "test", getattr(args, "data_dir", None))
        if tuple(images.shape[1:]) != tuple(model.input_shape):
            raise ValueError(f"dataset {args.dataset!r} has images {list(images.shape[1:])}, "
                             f"the model expects {list(model.input_shape)}")
        return images, labels
    raise ValueError("give --dataset NAME or --images IMAGES.npy")


def _fail(cmd, msg):
    print(f"shiftacc {cmd}: error: {msg}", file=sys.stderr)
    return 2


def cmd_train(args):
    """Train, quantize, export, evaluate; write the artifact."""
    import torch
    from ..models.artifact import ArtifactError, save_artifact
    from ..models.train import train_model
    # The default network is tiny: one thread beats two (no synchronisation per small op),
    # and stays fast on a machine whose cores are shared.
    torch.set_num_threads(args.threads)
    out = Path(args.out or f"{args.dataset}-shiftnet.npz")
    try:
        net, model = train_model(dataset=args.dataset, method=args.method, preset=args.preset,
                                 epochs=args.epochs, seed=args.seed, act_bits=args.act_bits,
                                 weight_bits=args.weight_bits, data_dir=args.data_dir,
                                 progress=not args.quiet)
        model = save_artifact(out, model)
    except (ValueError, ArtifactError) as e:
        return _fail("train", e)
    p = model.provenance
    print(f"wrote {out}: {model.name}, preset {p['preset']}, method {p['method']}, "
          f"{model.macs_per_image()} MACs/image, {p['train_seconds']} s training")
    print(f"test accuracy ({p['dataset']}): float {p['float_accuracy']:.4f}, "
          f"integer {p['int_accuracy']:.4f}")
    if "zero_shift_fraction" in p:
        print(f"zero shifts: {p['zero_shift_fraction']:.1%} of block channels")
    return 0


def cmd_golden(args):
    """Run the NumPy golden model; print accuracy, optionally write logits as JSON."""
    from ..models import golden
    from ..models.artifact import ArtifactError, load_artifact
    try:
        model = load_artifact(args.model)
        images, labels = images_from_args(args, model)
        logits = golden.run(model, images)
    except (ArtifactError, ValueError) as e:
        return _fail("golden", e)
    result = {"model": str(args.model), "images": int(len(images)),
              "logits": logits.astype(np.int64).tolist()}
    msg = f"{len(images)} images through {model.name}"
    if labels is not None:
        acc = float((logits.argmax(axis=1) == labels).mean()) if len(images) else 0.0
        result["accuracy"] = acc
        msg += f": accuracy {acc:.4f}"
    print(msg)
    if args.json:
        Path(args.json).write_text(json.dumps(result))
        print(f"wrote {args.json}")
    return 0


def describe(model):
    """Human-readable summary lines of a model: layers, shapes, parameters, MACs, shifts."""
    lines = [f"{model.name}: input {model.input_shape[0]}x{model.input_shape[1]}x"
             f"{model.input_shape[2]} ({model.input_bits}-bit), act_bits {model.act_bits}, "
             f"weight_bits {model.weight_bits}, {len(model.classes)} classes"]
    shapes = model.shapes()
    hist = Counter()
    params = 0
    lines.append(f"{'#':>3} {'op':<9} {'in':>10} {'out':>10} {'params':>7} {'MACs':>8}  detail")
    for i, (layer, sin, sout) in enumerate(zip(model.layers, shapes, shapes[1:])):
        p = macs = 0
        detail = ""
        if layer.op == "replicate":
            detail = f"factor {layer.factor}"
        elif layer.op == "shift":
            p = layer.shifts.size
            c = Counter(map(tuple, layer.shifts.tolist()))
            hist.update(c)
            zero = c.get((0, 0), 0)
            detail = (f"{len(c)} distinct shifts, {zero}/{len(layer.shifts)} zero, max |d| "
                      f"{int(np.abs(layer.shifts).max()) if layer.shifts.size else 0}")
        elif layer.op == "conv1x1":
            p = layer.weight.size + layer.bias.size + (2 * layer.cout if layer.requant else 0)
            macs = sout[0] * sout[1] * layer.cin * layer.cout
            detail = f"{layer.cin}->{layer.cout} stride {layer.stride}" + (
                "" if layer.requant else ", raw int32 logits")
        elif layer.op == "gap":
            p = 2
            detail = f"m {layer.m} sh {layer.sh}"
        params += p
        fmt = "x".join(map(str, sin)), "x".join(map(str, sout))
        lines.append(f"{i:>3} {layer.op:<9} {fmt[0]:>10} {fmt[1]:>10} {p:>7} {macs:>8}  {detail}")
    lines.append(f"parameters: {params}   MACs/image: {model.macs_per_image()}")
    if hist:
        lines.append("shift histogram (dy,dx): count   [all shift layers]")
        for (dy, dx), n in sorted(hist.items()):
            lines.append(f"  ({dy:+d},{dx:+d}): {n}")
    if model.provenance:
        lines.append("provenance: " + json.dumps(model.provenance, sort_keys=True))
    return lines


def cmd_info(args):
    """Print a model's layers, shapes, parameters, MACs and shift histogram."""
    from ..models.artifact import ArtifactError, load_artifact
    try:
        model = load_artifact(args.model)
    except ArtifactError as e:
        return _fail("info", e)
    print("\n".join(describe(model)))
    return 0


def register(subparsers):
    """Add ``train``, ``golden`` and ``info`` to the ``shiftacc`` subcommand parsers."""
    from ..models.data import DATASETS
    from ..models.nets import PRESETS
    from ..models.shift import METHODS
    p = subparsers.add_parser("train", help="train a shift network and export its artifact",
                              description="Train (shift search, fine-tune, QAT), export and "
                              "evaluate a shift network.")
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--method", choices=METHODS, default="sal",
                   help="shift selection method (default: sal)")
    p.add_argument("--out", metavar="MODEL.npz",
                   help="artifact to write (default: DATASET-shiftnet.npz)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="network preset (default: the data set's small one)")
    p.add_argument("--act-bits", type=int, choices=(4, 8), default=8)
    p.add_argument("--weight-bits", type=int, choices=range(2, 9), default=8, metavar="{2..8}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", metavar="DIR",
                   help="folder with MNIST/FashionMNIST/CIFAR-10 in torchvision's layout")
    # Results depend on the thread count (float reduction order), so the default is fixed
    # rather than taken from the machine: 2, the cores the project targets.
    p.add_argument("--threads", type=int, default=2,
                   help="torch CPU threads (default: 2; the trained weights depend on it)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("golden", help="run the NumPy golden model on images",
                              description="Run the exact integer golden model.")
    p.add_argument("model", metavar="MODEL.npz")
    add_image_args(p)
    p.add_argument("--json", metavar="OUT.json", help="write logits (and accuracy) as JSON")
    p.set_defaults(func=cmd_golden)

    p = subparsers.add_parser("info", help="describe an artifact",
                              description="Layers, shapes, parameters, MACs, shift histogram.")
    p.add_argument("model", metavar="MODEL.npz")
    p.set_defaults(func=cmd_info)
