"""``shiftacc train|golden|info`` (sw/cli_model.py)."""

import argparse
import json

import numpy as np
import pytest

from shiftacc.models import golden
from shiftacc.models.artifact import load_artifact
from shiftacc.models.data import load_split
from shiftacc.sw.cli import main
from shiftacc.sw.cli_model import add_image_args, images_from_args


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "m.npz"
    assert main(["train", "--dataset", "digits", "--method", "grouped", "--epochs", "4",
                 "--out", str(out), "--quiet", "--seed", "1"]) == 0
    return out


def test_train_writes_artifact_with_provenance(artifact, capsys):
    model = load_artifact(artifact)
    p = model.provenance
    assert p["dataset"] == "digits" and p["method"] == "grouped"
    assert {"float_accuracy", "int_accuracy"} <= set(p)


def test_golden_json_dataset(artifact, tmp_path, capsys):
    js = tmp_path / "out.json"
    assert main(["golden", str(artifact), "--dataset", "digits", "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    x, y = load_split("digits", "test")
    want = golden.run(load_artifact(artifact), x)
    assert data["logits"] == want.tolist()
    assert data["accuracy"] == pytest.approx(float((want.argmax(1) == y).mean()))
    assert abs(data["accuracy"] - load_artifact(artifact).provenance["int_accuracy"]) < 1e-6


def test_golden_images_npy(artifact, tmp_path):
    rng = np.random.default_rng(5)
    imgs = rng.integers(0, 256, size=(7, 8, 8)).astype(np.uint8)  # [N,H,W] accepted for C=1
    np.save(tmp_path / "x.npy", imgs)
    js = tmp_path / "o.json"
    assert main(["golden", str(artifact), "--images", str(tmp_path / "x.npy"),
                 "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert "accuracy" not in data
    assert data["logits"] == golden.run(load_artifact(artifact), imgs[..., None]).tolist()


def test_golden_errors_exit_2(artifact, tmp_path, capsys):
    assert main(["golden", str(tmp_path / "nope.npz"), "--dataset", "digits"]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    assert main(["golden", str(tmp_path / "bad.npz"), "--dataset", "digits"]) == 2
    assert "not a readable .npz" in capsys.readouterr().err
    np.save(tmp_path / "wrong.npy", np.zeros((2, 9, 8, 1), np.uint8))
    assert main(["golden", str(artifact), "--images", str(tmp_path / "wrong.npy")]) == 2
    assert "expects [N, 8, 8, 1]" in capsys.readouterr().err
    assert main(["golden", str(artifact)]) == 2
    assert "--dataset" in capsys.readouterr().err


def test_info(artifact, capsys):
    assert main(["info", str(artifact)]) == 0
    out = capsys.readouterr().out
    model = load_artifact(artifact)
    assert f"MACs/image: {model.macs_per_image()}" in out
    assert "shift histogram" in out and "replicate" in out and "gap" in out


def test_images_from_args_helper(artifact):
    parser = argparse.ArgumentParser()
    add_image_args(parser)
    model = load_artifact(artifact)
    x, y = images_from_args(parser.parse_args(["--dataset", "digits"]), model)
    assert x.shape == (360, 8, 8, 1) and y.shape == (360,)
    with pytest.raises(ValueError):
        images_from_args(parser.parse_args([]), model)
    with pytest.raises(SystemExit):
        parser.parse_args(["--dataset", "digits", "--images", "x.npy"])
