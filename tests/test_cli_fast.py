"""The command line starts fast and stays torch-free where it can.

``shiftacc --help`` must not import torch (or NumPy, Amaranth) to fill argparse choices, and
``info``, ``golden``, ``generate`` must run without importing torch at all; a missing extra is
a one-line error naming the pip command (exit 3).
"""

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

from shiftacc.models.artifact import save_artifact
from shiftacc.models.netgen import random_model
from shiftacc.sw import choices
from shiftacc.sw.cli import build_parser, main

# Runs main() in a fresh interpreter and prints the modules it loaded, as JSON.
_PROBE = """
import json, sys
{prelude}
from shiftacc.sw.cli import main
status = main({argv!r})
heavy = sorted(m for m in ("torch", "sklearn", "numpy", "amaranth", "cocotb")
               if m in sys.modules)
print("PROBE" + json.dumps({{"status": status, "loaded": heavy}}))
"""


def _probe(argv, prelude="", timeout=120):
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(argv=argv, prelude=prelude)],
                          capture_output=True, text=True, timeout=timeout)
    line = [l for l in proc.stdout.splitlines() if l.startswith("PROBE")]
    assert line, (proc.stdout[-2000:], proc.stderr[-2000:])
    return json.loads(line[-1][5:]), proc


def test_choices_equal_the_real_tables():
    """The light copies of the names must equal the tables they stand for (imports torch)."""
    from shiftacc.models.data import DATASETS
    from shiftacc.models.nets import PRESETS
    from shiftacc.models.shift import METHODS
    assert tuple(choices.DATASETS) == tuple(DATASETS)
    assert tuple(choices.METHODS) == tuple(METHODS)
    assert tuple(choices.PRESETS) == tuple(sorted(PRESETS))


def test_help_imports_nothing_heavy():
    """What makes ``--help`` fast (about 0.1 s): it imports no heavy package. The wall time
    itself is a figure, not a pass/fail bound: ``time shiftacc --help``."""
    res, proc = _probe(["--help"])
    assert res["status"] == 0 and "train" in proc.stdout and "exit status" in proc.stdout
    assert res["loaded"] == [], f"--help imported {res['loaded']}"


def test_version_flag(capsys):
    assert main(["--version"]) == 0
    import shiftacc
    assert shiftacc.__version__ in capsys.readouterr().out


def _options(parser):
    """(subcommand, action) for every option of every subcommand."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        for a in p._actions:
            if a.option_strings and not isinstance(a, argparse._HelpAction):
                yield name, p, a


def test_every_option_help_shows_its_default():
    parser = build_parser()
    for name, p, a in _options(parser):
        if a.required:
            assert "required" in a.help, (name, a.option_strings)
            continue
        if isinstance(a, (argparse._StoreTrueAction, argparse._CountAction)) or a.default is \
                argparse.SUPPRESS:
            text = a.help or ""
            assert "default" in text, f"{name} {a.option_strings}: help says no default"
            continue
        help_text = p.formatter_class(prog="x")._get_help_string(a)
        assert "default" in help_text, f"{name} {a.option_strings}: {help_text!r}"


def test_same_flag_names_everywhere():
    """-q/-v/--progress on every subcommand; no per-command spellings of them."""
    parser = build_parser()
    flags = {}
    for name, _, a in _options(parser):
        flags.setdefault(name, set()).update(a.option_strings)
    for name, f in flags.items():
        assert {"-q", "--quiet", "-v", "--verbose", "--progress"} <= f, name
    assert main(["-q", "info", "--help"]) == 0


@pytest.mark.parametrize("argv", [["sim", "m.npz", "--limit", "0"],
                                  ["sim", "m.npz", "--limit", "-1"],
                                  ["golden", "m.npz", "--limit", "0"],
                                  ["sim", "m.npz", "--batch", "0"],
                                  ["sim", "m.npz", "--stall-level", "256"],
                                  ["train", "--threads", "0"],
                                  ["train", "--epochs", "0"],
                                  ["train", "--epochs", "3"]])
def test_nonsense_numbers_are_usage_errors(argv, capsys):
    assert main(argv) == 2
    assert "out of range" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("fast")
    rng = np.random.default_rng(21)
    model = save_artifact(d / "tiny.npz", random_model(rng, size=(4, 4), blocks=1, max_width=5))
    np.save(d / "x.npy", rng.integers(0, 256, (3,) + model.input_shape).astype(np.uint8))
    return d


def test_info_golden_generate_do_not_import_torch(tiny):
    m, x = str(tiny / "tiny.npz"), str(tiny / "x.npy")
    for argv in (["info", m], ["golden", m, "--images", x],
                 ["generate", m, "--out", str(tiny / "hw"), "--force"]):
        res, proc = _probe(argv)
        assert res["status"] == 0, (argv, proc.stderr[-2000:])
        assert "torch" not in res["loaded"] and "sklearn" not in res["loaded"], (argv, res)


def test_missing_train_extra_is_exit_3(tiny):
    """torch absent: train says which extra to install, in one line, exit 3."""
    block = "sys.modules['torch'] = None"
    res, proc = _probe(["train", "--out", str(tiny / "t.npz")], prelude=block)
    assert res["status"] == 3
    err = proc.stderr.strip()
    assert "pip install 'shiftacc[train]'" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert not (tiny / "t.npz").exists()


def test_missing_sklearn_for_digits_is_exit_3(tiny):
    block = "sys.modules['sklearn'] = None; sys.modules['sklearn.datasets'] = None"
    res, proc = _probe(["golden", str(tiny / "tiny.npz"), "--dataset", "digits"],
                       prelude=block)
    assert res["status"] == 3
    assert "pip install 'shiftacc[train]'" in proc.stderr and "--dataset digits" in proc.stderr


def test_missing_yosys_is_exit_3(tiny):
    """Amaranth without a Yosys to write Verilog: exit 3 and how to get one."""
    prelude = ("import os; os.environ['AMARANTH_USE_YOSYS'] = 'system'; "
               "os.environ['PATH'] = '/nonexistent'; os.environ['YOSYS'] = 'no-such-yosys'")
    res, proc = _probe(["generate", str(tiny / "tiny.npz"), "--out", str(tiny / "hw2")],
                       prelude=prelude)
    assert res["status"] == 3, proc.stderr[-2000:]
    assert "pip install 'amaranth[builtin-yosys]'" in proc.stderr
