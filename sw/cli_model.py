"""``shiftacc train``, ``shiftacc golden`` and ``shiftacc info``: the model side of the CLI.

The options are declared in :mod:`shiftacc.sw.cli` (without importing this module); the
functions here run the commands. Errors are raised (:mod:`shiftacc.sw.errors`) and mapped
to exit statuses by :func:`shiftacc.sw.cli.main`.

Also exports :func:`add_image_args` and :func:`images_from_args` so that other subcommands
(``shiftacc sim``) take images exactly the same way, and :func:`add_attention_args`, the
``shiftacc train`` options that place attention at inference (artifact version 2). This
module imports only the standard library at import time (NumPy and torch inside the
commands), so that the parser can take those options from here without ``--help``
importing NumPy.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from .cli import add_image_args
from .errors import UsageError, require_extra
from .outputs import atomic_path, check_output, write_atomic

__all__ = ["add_image_args", "images_from_args", "hardware_images", "cmd_train", "cmd_golden",
           "cmd_info", "describe", "progress_wanted", "add_attention_args", "attention_from_args"]

#: ``shiftacc train`` options that list blocks, and the NetConfig field each fills.
ATTENTION_OPTIONS = {"eca": "eca", "dynconv": "dynconv", "nlsam": "nlsam"}


def _block_list(text):
    """argparse type of ``--eca`` / ``--dynconv`` / ``--nlsam``: ``0,2`` or ``all``."""
    text = text.strip()
    if text == "all":
        return "all"
    try:
        idx = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of block indices (e.g. 0,1) or 'all'"
        ) from None
    if any(i < 0 for i in idx):
        raise argparse.ArgumentTypeError(f"{text!r}: block indices are >= 0")
    if len(set(idx)) != len(idx):
        raise argparse.ArgumentTypeError(f"{text!r}: a block is listed twice")
    return idx


def _int_min(low):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"{v} is out of range: must be >= {low}")
        return v
    parse.__name__ = "integer"
    return parse


def add_attention_args(parser):
    """Add ``shiftacc train``'s attention options (artifact version 2, issue #11).

    ``--eca BLOCKS``, ``--dynconv BLOCKS``, ``--nlsam BLOCKS`` (comma-separated block indices
    of the preset, or ``all``), ``--dyn-kernels K``, ``--dyn-step T``. Read back by
    :func:`attention_from_args`. Uses argparse only (``shiftacc --help`` stays light).
    """
    g = parser.add_argument_group(
        "attention at inference (artifact version 2)",
        "Attention modules that stay in the integer network; each adds an op of artifact "
        "version 2 and is trained with its exact integer rule during QAT. BLOCKS are the "
        "preset's block indices, comma-separated, or 'all': block 0 is the first shift + 1x1 "
        "conv after the stem (digits presets have blocks 0-1, mnist-s and cifar10-s 0-3). "
        "Default: none, a version-1 network.")
    g.add_argument("--eca", type=_block_list, metavar="BLOCKS",
                   help="ECA channel attention (channel_attention) at the end of these "
                        "blocks: x * sigmoid(conv1d_k(mean_pool(x))), k taps shared by all "
                        "channels (default: none)")
    g.add_argument("--dynconv", type=_block_list, metavar="BLOCKS",
                   help="make these blocks' 1x1 convs dynamic convolutions (dynamic_conv1x1): "
                        "--dyn-kernels kernels mixed per image by a softmax attention over "
                        "the input pooled every --dyn-step pixels (default: none)")
    g.add_argument("--nlsam", type=_block_list, metavar="BLOCKS",
                   help="NL-SAM spatial attention (spatial_attention) at the end of these "
                        "blocks: x * sigmoid(bias + u . x[y, x]), u a linear map of the "
                        "pooled features (default: none)")
    g.add_argument("--dyn-kernels", type=_int_min(2), default=4, metavar="K",
                   help="kernels K of each dynamic conv, at least 2")
    g.add_argument("--dyn-step", type=_int_min(1), default=2, metavar="T",
                   help="sampling interval t of a dynamic conv's attention pooling (1: every "
                        "pixel)")


def attention_from_args(args, blocks):
    """``train_model``'s ``attention`` dict from the options of :func:`add_attention_args`.

    Parameters
    ----------
    args : argparse.Namespace
        Missing attributes count as not given (a parser without the options).
    blocks : int
        Number of blocks of the preset.

    Returns
    -------
    dict
        Empty when no attention option was given.

    Raises
    ------
    UsageError
        A block index the preset does not have.
    """
    att = {}
    for opt, field in ATTENTION_OPTIONS.items():
        val = getattr(args, opt, None)
        if val is None:
            continue
        idx = tuple(range(blocks)) if val == "all" else tuple(val)
        bad = [i for i in idx if not 0 <= i < blocks]
        if bad:
            raise UsageError(f"--{opt} {','.join(map(str, val))}: no block {bad[0]}; the "
                             f"preset has {blocks} blocks, numbered 0..{blocks - 1}")
        att[field] = idx
    if att.get("dynconv"):
        att["dyn_kernels"] = getattr(args, "dyn_kernels", 4)
        att["dyn_step"] = getattr(args, "dyn_step", 2)
    return att


def progress_wanted(args):
    """Progress bars: on a terminal or with ``--progress``, never with ``-q``."""
    if getattr(args, "quiet", False):
        return False
    return bool(getattr(args, "progress", False)) or sys.stderr.isatty()


def images_from_args(args, model):
    """Images (and labels when known) selected by :func:`add_image_args`'s flags.

    Parameters
    ----------
    args : argparse.Namespace
        ``dataset``, ``images``, ``data_dir`` and ``limit`` (missing attributes count as not
        given).
    model : Model
        The images must match its input shape and bits.

    Returns
    -------
    images : ndarray of uint8 [N, H, W, C]
        N >= 1, at most ``limit``.
    labels : ndarray of int64 [N] or None
        The test split's labels for ``--dataset``, None for ``--images``.

    Raises
    ------
    UsageError
        (a ValueError) Neither flag given, unreadable/mis-shaped images, no images, missing
        data folder.
    MissingExtra
        ``--dataset digits`` without scikit-learn.
    """
    from ..models.data import load_images_npy, load_split
    images_path = getattr(args, "images", None)
    dataset = getattr(args, "dataset", None)
    try:
        if images_path:
            images, labels = load_images_npy(images_path, model), None
            source = images_path
        elif dataset:
            if dataset == "digits":
                require_extra("sklearn", "train", "--dataset digits (scikit-learn's bundled "
                              "images)")
            images, labels = load_split(dataset, "test", getattr(args, "data_dir", None))
            source = f"dataset {dataset!r}"
            if tuple(images.shape[1:]) != tuple(model.input_shape):
                raise UsageError(f"dataset {dataset!r} has images {list(images.shape[1:])}, "
                                 f"the model expects {list(model.input_shape)}")
        else:
            raise UsageError("give --dataset NAME or --images IMAGES.npy")
    except UsageError:
        raise
    except ValueError as e:
        raise UsageError(str(e)) from None
    limit = getattr(args, "limit", None)
    if limit is not None:
        if limit < 1:
            raise UsageError(f"--limit {limit}: must be a positive number of images")
        images = images[:limit]
        labels = None if labels is None else labels[:limit]
    if len(images) == 0:
        raise UsageError(f"{source}: holds no images (N = 0); nothing to run")
    return images, labels


def hardware_images(args, model):
    """:func:`images_from_args`, checked against the model's input (shape, value range) and
    shaped ``[N, H, W, C]``: what ``sim`` and ``run`` feed to hardware.

    Raises
    ------
    UsageError
        As :func:`images_from_args`, or images that do not fit the model.
    """
    images, labels = images_from_args(args, model)
    from ..models import golden
    try:
        golden.check_images(model, images)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if images.ndim == 3:
        images = images[..., None]
    return images, labels


def cmd_train(args):
    """Train, quantize, export, evaluate; write the artifact.

    Raises
    ------
    MissingExtra
        torch or scikit-learn is not installed (the 'train' extra).
    UsageError
        Bad output path (checked before training), bad data folder, refused export.
    """
    out = Path(args.out or f"{args.dataset}-shiftnet.npz")
    check_output(out, what="--out", force=args.force, create_parents=True)
    epochs = getattr(args, "epochs", None)
    if epochs is not None and epochs < 4:
        raise UsageError(f"--epochs {epochs}: at least 4 are needed (search, fine-tune, QAT)")
    if args.threads < 1:
        raise UsageError(f"--threads {args.threads}: must be at least 1")
    torch = require_extra("torch", "train", "shiftacc train")
    if args.dataset == "digits":
        require_extra("sklearn", "train", "shiftacc train --dataset digits")
    from ..models.artifact import ArtifactError, save_artifact
    from ..models.data import load_split
    from ..models.nets import DEFAULT_PRESET, PRESETS
    from ..models.train import resolve_device, train_model
    preset = args.preset or DEFAULT_PRESET[args.dataset]
    attention = attention_from_args(args, len(PRESETS[preset].blocks))
    try:
        device = resolve_device(getattr(args, "device", "cpu"))
        # Fail on a missing or malformed data folder now, not after building the network.
        load_split(args.dataset, "test", args.data_dir)
    except ValueError as e:
        raise UsageError(str(e)) from None
    # The default network is tiny: one thread beats two (no synchronisation per small op),
    # and stays fast on a machine whose cores are shared.
    torch.set_num_threads(args.threads)
    try:
        net, model = train_model(dataset=args.dataset, method=args.method, preset=args.preset,
                                 epochs=epochs, seed=args.seed, act_bits=args.act_bits,
                                 weight_bits=args.weight_bits, data_dir=args.data_dir,
                                 progress=progress_wanted(args), device=device,
                                 attention=attention or None)
    except ArtifactError:
        raise
    except ValueError as e:
        raise UsageError(str(e)) from None
    except KeyboardInterrupt:
        # Nothing has been written yet (the artifact is written below, atomically, and its
        # folders are created only then); say so before the CLI reports the interruption.
        print(f"shiftacc train: interrupted during training; nothing written ({out} "
              f"{'left as it was' if out.exists() else 'not created'})", file=sys.stderr)
        raise
    # The output was checked before training; check again (it may have appeared meanwhile)
    # and write through a temporary file beside it.
    check_output(out, what="--out", force=args.force, create_parents=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        model = save_artifact(tmp, model)
    p = model.provenance
    print(f"wrote {out}: {model.name}, preset {p['preset']}, method {p['method']}, "
          f"{model.macs_per_image()} MACs/image, {p['epochs']} epochs, {p['train_seconds']} s "
          f"training on {p['device']} ({p['images_per_second']} images/s), "
          f"{p['wall_seconds']} s in all")
    print(f"test accuracy ({p['dataset']}): float {p['float_accuracy']:.4f}, "
          f"integer {p['int_accuracy']:.4f}")
    if "attention" in p:
        a = p["attention"]
        print("attention (artifact version 2): " + ", ".join(
            f"{k} blocks {','.join(map(str, a[k]))}" for k in ATTENTION_OPTIONS if a.get(k)))
    if "zero_shift_fraction" in p:
        print(f"zero shifts: {p['zero_shift_fraction']:.1%} of block channels")
    return 0


def cmd_golden(args):
    """Run the NumPy golden model; print accuracy, optionally write logits as JSON.

    ``--json`` is checked before anything runs and never replaces an input; an existing file
    is replaced only with ``--force``.
    """
    import numpy as np

    from ..models import golden
    from ..models.artifact import load_artifact
    if args.json:
        check_output(args.json, what="--json", inputs=(args.model, args.images),
                     force=args.force)
    model = load_artifact(args.model)
    images, labels = images_from_args(args, model)
    try:
        logits = golden.run(model, images)
    except ValueError as e:
        raise UsageError(str(e)) from None
    result = {"model": str(args.model), "images": int(len(images)),
              "logits": logits.astype(np.int64).tolist()}
    msg = f"{len(images)} images through {model.name}"
    if labels is not None:
        acc = float((logits.argmax(axis=1) == labels).mean())
        result["accuracy"] = acc
        msg += f": accuracy {acc:.4f}"
    print(msg)
    if args.json:
        write_atomic(args.json, json.dumps(result))
        print(f"wrote {args.json}")
    return 0


def describe(model):
    """Human-readable summary lines of a model: layers, shapes, parameters, MACs, shifts.

    Each layer's parameters, MACs and detail text come from its op in the op table
    (:data:`shiftacc.models.ops.OPS`).
    """
    from ..models.ops import OPS
    lines = [f"{model.name}: input {model.input_shape[0]}x{model.input_shape[1]}x"
             f"{model.input_shape[2]} ({model.input_bits}-bit), act_bits {model.act_bits}, "
             f"weight_bits {model.weight_bits}, {len(model.classes)} classes"]
    shapes = model.shapes()
    hist = Counter()
    params = 0
    w = max([9] + [len(layer.op) for layer in model.layers])
    lines.append(f"{'#':>3} {'op':<{w}} {'in':>10} {'out':>10} {'params':>7} {'MACs':>8}  detail")
    for i, (layer, sin, sout) in enumerate(zip(model.layers, shapes, shapes[1:])):
        op = OPS[layer.op]
        p, macs, detail = op.params(layer), op.macs(layer, sout), op.detail(layer)
        hist.update(op.shift_histogram(layer) or {})
        params += p
        fmt = "x".join(map(str, sin)), "x".join(map(str, sout))
        lines.append(f"{i:>3} {layer.op:<{w}} {fmt[0]:>10} {fmt[1]:>10} {p:>7} {macs:>8}  "
                     f"{detail}")
    lines.append(f"parameters: {params}   MACs/image: {model.macs_per_image()}")
    if hist:
        lines.append("shift histogram (dy,dx): count   [all shift layers]")
        for (dy, dx), n in sorted(hist.items()):
            lines.append(f"  ({dy:+d},{dx:+d}): {n}")
    if model.provenance:
        prov = dict(model.provenance)
        # The per-epoch training history is for `shiftacc report`; one line says it is there.
        hist = prov.pop("history", None)
        lines.append("provenance: " + json.dumps(prov, sort_keys=True))
        if isinstance(hist, dict) and isinstance(hist.get("epoch"), list):
            lines.append(f"training history: {len(hist['epoch'])} epochs (plots: shiftacc "
                         f"report)")
    return lines


def cmd_info(args):
    """Print a model's layers, shapes, parameters, MACs and shift histogram."""
    from ..models.artifact import load_artifact
    model = load_artifact(args.model)
    print("\n".join(describe(model)))
    return 0
