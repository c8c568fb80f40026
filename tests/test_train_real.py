"""Training on real-data layouts (issue 13): MNIST/Fashion-MNIST/CIFAR-10 folders the tests
write themselves, the fast training ops, --device, provenance, progress and Ctrl-C.

Everything here is small (tiny folders, 4 epochs, a few batches): the real figures come from
``benchmarks/bench_train_speed.py`` and the README's MNIST commands.
"""

import pickle
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from shiftacc.models import golden
from shiftacc.models.artifact import load_artifact
from shiftacc.models.data import load_split
from shiftacc.models.int_eval import run_int
from shiftacc.models.nets import ShiftNet, make_net, preset_for, to_input
from shiftacc.models.quant import set_qat
from shiftacc.models.shift import (all_shifts, candidate_scores, candidates, shift_nchw,
                                   soft_shift)
from shiftacc.models.train import (RECIPES, augment, lr_factor, resolve_device, train_model)
from shiftacc.sim.streamtb import make_rng
from shiftacc.sw.cli import main
from test_models_data import write_idx  # the IDX writer of the loader tests


def np_rng(name):
    return np.random.default_rng(make_rng(name)[1])




def class_images(rng, n, h, w, c=None):
    """Images whose class is readable (a bright bar at a class-dependent row) + labels."""
    y = rng.integers(0, 10, size=n)
    shape = (n, h, w) if c is None else (n, h, w, c)
    x = rng.integers(0, 40, size=shape)
    for i, k in enumerate(y):
        row = 2 + int(k) * (h - 4) // 10
        x[i, row:row + 2] = 250
    return x.astype(np.uint8), y


def mnist_folder(root, sub="MNIST", gz=False, n_train=192, n_test=64, name="tiny-mnist"):
    rng = np_rng(name)
    raw = root / sub / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x, y = class_images(rng, n, 28, 28)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x, gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y, gz)
    return root


def cifar_folder(root, per_batch=8):
    rng = np_rng("tiny-cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x, y = class_images(rng, per_batch, 32, 32, 3)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x.transpose(0, 3, 1, 2).reshape(per_batch, 3072),
                         b"labels": y.tolist()}, f)
    return root


# --- loaders -------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_mnist_layout_raw_and_gz_read_the_same(tmp_path, gz):
    root = mnist_folder(tmp_path, "FashionMNIST", gz=gz, name="same-data")
    x, y = load_split("fashion-mnist", "train", root)
    ref = mnist_folder(tmp_path / "ref", "FashionMNIST", gz=not gz, name="same-data")
    x2, y2 = load_split("fashion-mnist", "train", ref)
    assert x.shape == (192, 28, 28, 1) and np.array_equal(x, x2) and np.array_equal(y, y2)


def test_damaged_gz_is_a_clear_error(tmp_path):
    root = mnist_folder(tmp_path, gz=True)
    p = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:40])  # truncated download
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz: damaged gzip"):
        load_split("mnist", "test", root)
    assert main(["train", "--dataset", "mnist", "--data-dir", str(root), "--out",
                 str(tmp_path / "m.npz"), "--quiet"]) == 2


# --- fast training ops equal their reference formulations ---------------------------------

@pytest.mark.parametrize("trial", range(4))
def test_channels_last_shift_equals_nchw_shift(trial):
    rng = np_rng(f"cl-shift-{trial}")
    n, c, h, w = (int(v) for v in rng.integers(1, 7, size=4))
    r = int(rng.integers(0, 3))
    s = rng.integers(-r, r + 1, size=(c, 2))
    x = torch.randn(n, c, h, w, requires_grad=True)
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    a, b = shift_nchw(x, s), shift_nchw(xc, s)
    assert torch.equal(a, b)
    g = torch.randn_like(a)
    a.backward(g)
    b.backward(g.contiguous(memory_format=torch.channels_last))
    assert torch.equal(x.grad, xc.grad)


@pytest.mark.parametrize("r", [1, 2])
def test_soft_shift_and_scores_equal_the_k_copies_formulation(r):
    rng = np_rng(f"soft-{r}")
    c = 7
    k = (2 * r + 1) ** 2
    x = torch.as_tensor(rng.normal(size=(3, c, 6, 5)), dtype=torch.float32)
    wts = torch.softmax(torch.as_tensor(rng.normal(size=(c, k)), dtype=torch.float32), 1)
    ref = (all_shifts(x, r) * wts.t()[:, None, :, None, None]).sum(0)
    assert torch.allclose(soft_shift(x, wts, r), ref, atol=1e-5)
    g = torch.as_tensor(rng.normal(size=x.shape), dtype=torch.float32)
    ref = torch.einsum("knchw,nchw->ck", all_shifts(x, r), g)
    assert torch.allclose(candidate_scores(x, g, r), ref, atol=1e-4)


def test_fused_stem_equals_replicate_shift_conv():
    torch.manual_seed(0)
    net = make_net("mnist-s", "grouped")
    assert net._fused_stem()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        fused = net.body[2](x, stem3x3=True)
        slow = net.body[2](net.body[1](net.body[0](x)))
    assert torch.allclose(fused, slow, atol=1e-5)
    net.body[1].shifts[0, 0] = 0  # not the 3x3 table any more: no fusion
    assert not net._fused_stem()


@pytest.mark.parametrize("preset,shape", [("mnist-s", (28, 28, 1)), ("cifar10-s", (32, 32, 3))])
def test_network_runs_channels_last(preset, shape):
    # A one-channel image is NCHW and channels-last at once; without care the convolutions
    # answer NCHW and BatchNorm, ReLU and pooling run on the slow layout.
    net = make_net(preset, "sal", in_shape=shape)
    seen = []
    for m in net.body[2:-2]:
        m.register_forward_hook(lambda mod, inp, out: seen.append(
            (mod.label, out.is_contiguous(memory_format=torch.channels_last))))
    net(torch.rand(2, shape[2], shape[0], shape[1]))
    assert seen and all(ok for _, ok in seen), [lab for lab, ok in seen if not ok]


def test_augment_translates_raw_pixels_by_at_most_one():
    rng = np_rng("augment")
    x = torch.as_tensor(rng.integers(1, 256, size=(32, 6, 7, 2)), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(1)
    out = augment(x, gen, 1.0)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    moved = 0
    for i in range(len(x)):
        hits = [(dy, dx) for dy, dx in candidates(1)
                if torch.equal(out[i].permute(2, 0, 1),
                               shift_nchw(x[i].permute(2, 0, 1)[None].float(),
                                          [[dy, dx]] * 2)[0].to(torch.uint8))]
        assert hits, f"image {i} is not a ±1-pixel translation"
        moved += hits[0] != (0, 0)
    assert moved > 16
    assert torch.equal(augment(x, gen, 0.0), x)


def test_onecycle_warms_up_then_decays():
    f = [lr_factor(s, 100, "onecycle", 0.2, 0.02) for s in range(101)]
    assert f[0] == pytest.approx(0.04) and f[20] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:20], f[1:21]))
    assert all(a >= b for a, b in zip(f[20:], f[21:])) and f[100] == pytest.approx(0.02)
    assert lr_factor(0, 100, "cosine") == pytest.approx(1.0)
    assert RECIPES["mnist"]["schedule"] == "onecycle" and RECIPES["digits"]["epochs"] == 60


# --- devices ---------------------------------------------------------------------------------

def test_device_resolution(monkeypatch):
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match="--device cuda: .* sees no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda") == "cuda"


def test_cuda_without_cuda_is_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "m.npz"
    assert main(["train", "--device", "cuda", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "sees no CUDA device" in err and "Traceback" not in err
    assert not out.exists()


# --- real-layout training through the CLI ----------------------------------------------------

def test_train_mnist_folder_cli(tmp_path, capsys):
    root = mnist_folder(tmp_path / "data", gz=True)
    out = tmp_path / "o" / "mnist.npz"
    want_dev = "cuda" if torch.cuda.is_available() else "cpu"
    assert main(["train", "--dataset", "mnist", "--data-dir", str(root), "--epochs", "4",
                 "--device", "auto", "--out", str(out), "--progress"]) == 0
    cap = capsys.readouterr()
    # Progress moves within epochs: batches, images/s and the epoch/phase are shown.
    assert "epoch 1/4 (search)" in cap.err and "epoch 4/4 (qat)" in cap.err
    assert "batch" in cap.err and "img_s=" in cap.err
    assert "4 epochs" in cap.out and f"on {want_dev}" in cap.out
    model = load_artifact(out)
    assert model.input_shape == (28, 28, 1)
    p = model.provenance
    assert p["dataset"] == "mnist" and p["device"] == want_dev and p["epochs"] == 4
    assert p["batch"] == RECIPES["mnist"]["batch"] and p["schedule"] == "onecycle"
    assert p["threads"] == 1 and p["train_seconds"] > 0 and p["images_per_second"] > 0
    assert p["wall_seconds"] >= p["train_seconds"]
    x, y = load_split("mnist", "test", root)
    g = golden.run(model, x)
    assert np.array_equal(g, run_int(model, x))
    assert float((g.argmax(1) == y).mean()) == pytest.approx(p["int_accuracy"], abs=1e-6)


def test_cifar10_preset_builds_and_trains_a_step(tmp_path):
    cfg = preset_for("cifar10-s", in_shape=(32, 32, 3))
    assert ShiftNet(cfg, "sal") is not None
    root = cifar_folder(tmp_path)
    net, model = train_model("cifar10", "sal", epochs=4, batch=16, data_dir=root,
                             progress=False)
    assert model.input_shape == (32, 32, 3) and len(model.classes) == 10
    # Sized for an ECP5-85F-class device: moderate MACs per image.
    assert 2_000_000 < model.macs_per_image() < 8_000_000
    x, _ = load_split("cifar10", "test", root)
    assert np.array_equal(golden.run(model, x), run_int(model, x))
    set_qat(net, True)
    net.eval()
    with torch.no_grad():
        assert net(to_input(x)).shape == (8, 10)


# --- Ctrl-C ------------------------------------------------------------------------------------

def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background pytest run inherits it ignored


def test_ctrl_c_during_training_writes_nothing(tmp_path):
    out = tmp_path / "sub" / "m.npz"
    cmd = [sys.executable, "-c", "import sys; from shiftacc.sw.cli import main; "
           "sys.exit(main())", "train", "--dataset", "digits", "--epochs", "400", "--out",
           str(out), "--progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_default_sigint)
    chunks = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(
        lambda: proc.stderr.read1(4096), b"")), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 60
        while b"epoch 2/400" not in b"".join(chunks) and time.time() < deadline \
                and proc.poll() is None:
            time.sleep(0.1)
        assert b"epoch 2/400" in b"".join(chunks), "training never started"
        proc.send_signal(signal.SIGINT)
        status = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    proc.stdout.close()  # closed here, not by the garbage collector (a ResourceWarning)
    proc.stderr.close()
    err = b"".join(chunks).decode(errors="replace")
    assert status == 130, err[-2000:]
    assert "interrupted during training; nothing written" in err and "Traceback" not in err
    assert not out.exists() and not out.parent.exists()
    assert not list(tmp_path.rglob("*.tmp*"))
