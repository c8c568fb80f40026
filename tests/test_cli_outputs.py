"""Nothing lost: outputs are checked before the work, never replace an input, need --force to
replace a file, and are written atomically; and the error ladder of ``main``."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shiftacc.models.artifact import load_artifact, save_artifact
from shiftacc.models.netgen import random_model
from shiftacc.sw import cli
from shiftacc.sw.cli import main
from shiftacc.sw.errors import BuildFailed, Mismatch, MissingTool, Stalled
from shiftacc.sw.outputs import check_output, write_atomic


@pytest.fixture()
def tiny(tmp_path):
    rng = np.random.default_rng(21)
    model = save_artifact(tmp_path / "tiny.npz",
                          random_model(rng, size=(4, 4), blocks=1, max_width=5))
    np.save(tmp_path / "x.npy", rng.integers(0, 256, (3,) + model.input_shape).astype(np.uint8))
    return tmp_path


def _bytes(path):
    return Path(path).read_bytes()


def test_golden_json_never_replaces_the_model(tiny, capsys):
    m = tiny / "tiny.npz"
    before = _bytes(m)
    for extra in ([], ["--force"]):
        assert main(["golden", str(m), "--images", str(tiny / "x.npy"), "--json", str(m)]
                    + extra) == 2
        assert "also an input" in capsys.readouterr().err
    assert _bytes(m) == before
    load_artifact(m)
    # The same file through another name (a symlink) is refused as well.
    (tiny / "link.json").symlink_to(m)
    assert main(["golden", str(m), "--images", str(tiny / "x.npy"),
                 "--json", str(tiny / "link.json"), "--force"]) == 2
    assert _bytes(m) == before


def test_golden_json_refuses_existing_without_force(tiny, capsys):
    out = tiny / "g.json"
    out.write_text("keep me")
    args = ["golden", str(tiny / "tiny.npz"), "--images", str(tiny / "x.npy"), "--json",
            str(out)]
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main(args + ["--force"]) == 0
    assert len(json.loads(out.read_text())["logits"]) == 3
    # No temporary file is left beside it.
    assert sorted(p.name for p in tiny.iterdir() if p.name.startswith(".")) == []


def test_sim_json_images_and_config_are_inputs_too(tiny, capsys):
    m, x = str(tiny / "tiny.npz"), tiny / "x.npy"
    before = _bytes(x)
    assert main(["sim", m, "--images", str(x), "--json", str(x), "--force"]) == 2
    assert _bytes(x) == before
    cfg = tiny / "par.json"
    cfg.write_text("{}")
    assert main(["sim", m, "--images", str(x), "--config", str(cfg), "--json", str(cfg),
                 "--force"]) == 2
    assert cfg.read_text() == "{}"


@pytest.mark.parametrize("argv,words", [
    (["sim", "{m}", "--images", "{x}", "--json", "/missing/dir/x.json"], "does not exist"),
    (["sim", "{m}", "--images", "{x}", "--json", "{d}"], "is a folder"),
    (["sim", "{m}", "--images", "{x}", "--workdir", "{m}"], "is a file"),
    (["golden", "{m}", "--images", "{x}", "--json", "/missing/dir/x.json"], "does not exist"),
    (["train", "--out", "{d}"], "is a folder"),
    (["train", "--out", "{m}/sub/m.npz"], "is a file"),
    (["train", "--out", "{m}"], "already exists"),
    (["generate", "{m}", "--out", "{m}"], "is a file"),
])
def test_output_paths_checked_before_the_work(tiny, argv, words, capsys):
    """Each of these would fail only after minutes of work if not checked first."""
    argv = [a.format(m=tiny / "tiny.npz", x=tiny / "x.npy", d=tiny) for a in argv]
    t0 = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - t0 < 30  # seconds, not the minutes of the work itself
    cap = capsys.readouterr()
    assert words in cap.err, cap.err
    assert "building" not in cap.out and "fast_run" not in cap.out and "epoch" not in cap.err


def test_train_out_may_name_a_new_folder(tmp_path):
    """train --out out/m.npz creates out/ (the README's main job starts so); the check only
    makes sure it can be created."""
    assert check_output(tmp_path / "new" / "deeper" / "m.npz", what="--out",
                        create_parents=True) == tmp_path / "new" / "deeper" / "m.npz"
    assert not (tmp_path / "new").exists()  # nothing is created before the work is done
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        check_output(tmp_path / "f" / "sub" / "m.npz", what="--out", create_parents=True)
    with pytest.raises(ValueError, match="does not exist"):
        check_output(tmp_path / "new" / "m.json", what="--json")


def test_unwritable_folder_refused(tiny, capsys):
    if os.geteuid() == 0:
        # root writes anywhere; check the rule on the helper with an explicit permission map.
        ro = tiny / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            import unittest.mock as mock
            with mock.patch("shiftacc.sw.outputs.os.access", return_value=False):
                with pytest.raises(ValueError, match="not writable"):
                    check_output(ro / "x.json", what="--json")
        finally:
            ro.chmod(0o700)
    else:
        ro = tiny / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        assert main(["golden", str(tiny / "tiny.npz"), "--images", str(tiny / "x.npy"),
                     "--json", str(ro / "x.json")]) == 2
        assert "not writable" in capsys.readouterr().err


def test_zero_images_is_usage_error(tiny, capsys):
    m = load_artifact(tiny / "tiny.npz")
    np.save(tiny / "none.npy", np.zeros((0,) + m.input_shape, np.uint8))
    for cmd in ("golden", "sim"):
        assert main([cmd, str(tiny / "tiny.npz"), "--images", str(tiny / "none.npy")]) == 2
        assert "no images" in capsys.readouterr().err


def test_write_atomic_keeps_old_content_on_failure(tmp_path):
    out = tmp_path / "o.json"
    out.write_text("old")

    with pytest.raises(TypeError):
        write_atomic(out, 12345)  # not str/bytes: fails while writing the temporary file
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["o.json"]
    write_atomic(out, "new")
    assert out.read_text() == "new"
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)  # a normal file mode, not mkstemp's


def test_generate_folder_rules(tiny, capsys):
    """Same artifact: refreshed. Another artifact's files: refused unless --force."""
    m = tiny / "tiny.npz"
    out = tiny / "hw"
    assert main(["generate", str(m), "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["artifact"] == str(m.resolve())
    (out / "notes.txt").write_text("mine")
    assert main(["generate", str(m), "--out", str(out)]) == 0  # retrain-and-regenerate loop
    other = tiny / "other.npz"
    save_artifact(other, random_model(np.random.default_rng(5), size=(4, 4), blocks=1,
                                      max_width=5))
    before = _bytes(out / "params.bin")
    assert main(["generate", str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--force" in err and str(m.resolve()) in err
    assert _bytes(out / "params.bin") == before
    assert main(["generate", str(other), "--out", str(out), "--force"]) == 0
    assert json.loads((out / "summary.json").read_text())["artifact"] == str(other.resolve())
    assert (out / "notes.txt").read_text() == "mine"  # other files are never touched
    # A folder with such names that generate did not write is refused too.
    foreign = tiny / "foreign"
    foreign.mkdir()
    (foreign / "params.bin").write_bytes(b"precious")
    assert main(["generate", str(m), "--out", str(foreign)]) == 2
    assert (foreign / "params.bin").read_bytes() == b"precious"


# -- the error ladder -------------------------------------------------------------------

def _raise(exc):
    def handler(args):
        raise exc
    return handler


@pytest.mark.parametrize("exc,status", [
    (Mismatch("3 images differ"), 1), (Stalled("stalled at layer 4"), 1),
    (MissingTool("Icarus Verilog is not installed: apt-get install -y iverilog"), 3),
    (BuildFailed("verilator build failed"), 4), (KeyboardInterrupt(), 130),
    (FileNotFoundError("x.npy"), 2)])
def test_error_ladder(monkeypatch, capsys, exc, status):
    import shiftacc.sw.cli_model as cm
    monkeypatch.setattr(cm, "cmd_info", _raise(exc))
    assert main(["info", "m.npz"]) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("shiftacc info:")


def test_typed_library_errors_are_usage_errors(tiny, capsys):
    bad = tiny / "par.json"
    bad.write_text('{"max_multipliers": 0}')
    assert main(["generate", str(tiny / "tiny.npz"), "--out", str(tiny / "o"),
                 "--config", str(bad)]) == 2
    assert "max_multipliers" in capsys.readouterr().err
    assert main(["info", str(tiny / "missing.npz")]) == 2


def test_internal_error_writes_a_crash_log(monkeypatch, tmp_path, capsys):
    import shiftacc.sw.cli_model as cm
    monkeypatch.setenv("SHIFTACC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cm, "cmd_info", _raise(ZeroDivisionError("a bug")))
    assert main(["info", "m.npz"]) == 70
    err = capsys.readouterr().err
    assert "internal error" in err and "report it" in err and "Traceback" not in err
    logs = list((tmp_path / "cache").glob("shiftacc-crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err
    text = logs[0].read_text()
    assert "ZeroDivisionError: a bug" in text and "Traceback" in text and "argv" in text


def test_verbose_shows_traceback_of_reported_errors(monkeypatch, capsys):
    import shiftacc.sw.cli_model as cm
    monkeypatch.setattr(cm, "cmd_info", _raise(BuildFailed("verilator build failed")))
    assert main(["-v", "info", "m.npz"]) == 4
    assert "Traceback" in capsys.readouterr().err


def test_sigterm_is_143_and_runs_cleanup(tmp_path):
    """SIGTERM is turned into an exception in the main thread, so ``finally`` blocks run."""
    code = ("import os, signal, sys, time\n"
            "import shiftacc.sw.cli_model as cm\n"
            "def slow(args):\n"
            "    try:\n"
            "        print('ready', flush=True); time.sleep(30)\n"
            "    finally:\n"
            f"        open({str(tmp_path / 'cleaned')!r}, 'w').close()\n"
            "cm.cmd_info = slow\n"
            "from shiftacc.sw.cli import main\n"
            "sys.exit(main(['info', 'm.npz']))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.terminate()
        try:
            status = proc.wait(timeout=30)  # generous: the machine is shared and loaded
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"SIGTERM did not end the CLI within 30 s; stderr: "
                        f"{proc.communicate(timeout=10)[1][-2000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    proc.stdout.close()  # closed here, not by the garbage collector (a ResourceWarning)
    proc.stderr.close()
    assert status == 143, err
    assert "terminated" in err
    assert (tmp_path / "cleaned").exists()


def test_sim_mismatch_exit_1_writes_json_first(tiny, monkeypatch, capsys):
    """A mismatch: the JSON (with the first mismatch) is written, then exit 1."""
    import shiftacc.sim.runner as runner
    model = load_artifact(tiny / "tiny.npz")
    x = np.load(tiny / "x.npy")
    from shiftacc.models import golden
    gold = golden.run(model, x).tolist()
    bad = [list(r) for r in gold]
    bad[1][0] += 1

    def fake(model, images, **kw):
        return {"logits": bad, "golden_mismatches": 1, "cycles_per_image": None,
                "sim_cycles": 10, "sim_wall_seconds": 0.1, "seed": 1, "workdir": str(tiny),
                "first_mismatch": {"image": 1, "hardware": bad[1], "golden": gold[1]},
                "waveform": str(tiny / "w.fst")}

    monkeypatch.setattr(runner, "simulate", fake)
    out = tiny / "r.json"
    assert main(["sim", str(tiny / "tiny.npz"), "--images", str(tiny / "x.npy"), "--json",
                 str(out), "--waves"]) == 1
    res = json.loads(out.read_text())
    assert res["golden_mismatches"] == 1 and res["first_mismatch"]["image"] == 1
    err = capsys.readouterr().err
    assert "1 of 3 images differ" in err and "w.fst" in err
