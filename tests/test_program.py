"""``shiftacc program``: the programmer's command line per board, and every way it can fail.

The programmers are stand-in scripts named by $ICEPROG / $OPENFPGALOADER / $DFU_UTIL (the
same variables amaranth-boards' own ``toolchain_program`` reads), so the tests check exactly
what would run on a real board, without one.
"""

import json
import os
import subprocess
import sys
import time

import pytest

FAKE = """#!/bin/sh
printf '%s\\n' "$@" > "{log}"
echo "fake programmer: {say}"
exit {rc}
"""


def _shiftacc(*args, env=None, timeout=60):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "shiftacc", *args], capture_output=True,
                          text=True, env=e, timeout=timeout)


def _fake(tmp_path, name, rc=0, say="done", body=None):
    log = tmp_path / f"{name}.args"
    script = tmp_path / name
    script.write_text(body or FAKE.format(log=log, rc=rc, say=say))
    script.chmod(0o755)
    return script, log


def _build_dir(tmp_path, board, suffix):
    d = tmp_path / f"build-{board}"
    d.mkdir()
    (d / f"shiftacc{suffix}").write_bytes(b"\xff\x00bitstream")
    (d / "build_report.json").write_text(json.dumps({"board": board}))
    return d


@pytest.mark.parametrize("board, env, suffix, memory, expect", [
    ("icebreaker", "ICEPROG", ".bin", None, ["{f}"]),
    ("icebreaker", "ICEPROG", ".bin", "sram", ["-S", "{f}"]),
    ("ulx3s-85f", "OPENFPGALOADER", ".bit", None, ["-b", "ulx3s", "-m", "{f}"]),
    ("ulx3s-12f", "OPENFPGALOADER", ".bit", "flash", ["-b", "ulx3s", "-f", "{f}"]),
    ("ecpix5-85", "OPENFPGALOADER", ".bit", None, ["-c", "ft2232", "-m", "{f}"]),
    ("orangecrab-85f", "DFU_UTIL", ".bit", None, ["-a", "0", "-D", "{f}"]),
])
def test_programmer_gets_the_boards_arguments(tmp_path, board, env, suffix, memory, expect):
    tool, log = _fake(tmp_path, "prog")
    d = _build_dir(tmp_path, board, suffix)
    args = ["program", str(d)] + (["--memory", memory] if memory else [])
    r = _shiftacc(*args, env={env: str(tool)})
    assert r.returncode == 0, r.stderr
    f = str(d / f"shiftacc{suffix}")
    assert log.read_text().split("\n")[:-1] == [a.replace("{f}", f) for a in expect]
    assert board in r.stdout and "written to" in r.stdout


def test_board_from_option_and_bitstream_file(tmp_path):
    tool, log = _fake(tmp_path, "prog")
    f = tmp_path / "mine.bit"
    f.write_bytes(b"x")
    r = _shiftacc("program", str(f), "--board", "ulx3s-25f", env={"OPENFPGALOADER": str(tool)})
    assert r.returncode == 0, r.stderr
    assert log.read_text().split() == ["-b", "ulx3s", "-m", str(f)]


def test_dry_run_runs_nothing(tmp_path):
    tool, log = _fake(tmp_path, "prog")
    d = _build_dir(tmp_path, "icebreaker", ".bin")
    r = _shiftacc("program", str(d), "--dry-run", env={"ICEPROG": str(tool)})
    assert r.returncode == 0
    assert r.stdout.strip() == f"{tool} {d / 'shiftacc.bin'}"
    assert not log.exists()


def test_failing_programmer_exits_4_with_its_output(tmp_path):
    tool, _ = _fake(tmp_path, "prog", rc=2, say="Can't find iCE FTDI USB device")
    d = _build_dir(tmp_path, "icebreaker", ".bin")
    r = _shiftacc("program", str(d), env={"ICEPROG": str(tool)})
    assert r.returncode == 4
    assert "exit status 2" in r.stderr and "Can't find iCE FTDI USB device" in r.stderr
    assert "plugged in" in r.stderr


def test_hanging_programmer_is_killed_by_the_deadline(tmp_path):
    tool, _ = _fake(tmp_path, "prog", body="#!/bin/sh\necho waiting for the board\n"
                                           "exec sleep 60\n")
    d = _build_dir(tmp_path, "ulx3s-85f", ".bit")
    t0 = time.monotonic()
    r = _shiftacc("program", str(d), "--timeout", "1", env={"OPENFPGALOADER": str(tool)})
    assert time.monotonic() - t0 < 30
    assert r.returncode == 4
    assert "did not finish within 1 s" in r.stderr and "waiting for the board" in r.stderr


def test_missing_programmer_exits_3_with_install_hint(tmp_path):
    d = _build_dir(tmp_path, "ulx3s-85f", ".bit")
    r = _shiftacc("program", str(d), env={"OPENFPGALOADER": str(tmp_path / "nothing")})
    assert r.returncode == 3
    assert "apt-get install openfpgaloader" in r.stderr


@pytest.mark.parametrize("setup, args, words", [
    (lambda t: _build_dir(t, "icebreaker", ".bin"), ["--board", "ulx3s-85f"],
     "holds a build for icebreaker, not ulx3s-85f"),
    (lambda t: (t / "empty").mkdir() or t / "empty", ["--board", "icebreaker"],
     "no bitstream in"),
    (lambda t: (t / "empty").mkdir() or t / "empty", [], "give --board"),
    (lambda t: t / "nowhere", ["--board", "icebreaker"], "neither a build folder"),
    (lambda t: _build_dir(t, "ulx3s-85f", ".bit") / "shiftacc.bit", ["--board", "icebreaker"],
     "takes a .bin file"),
    (lambda t: _build_dir(t, "arty-a7-35", ".bit"), [], "vendor's tools"),
    (lambda t: _build_dir(t, "orangecrab-25f", ".bit"), ["--memory", "sram"],
     "use --memory flash"),
    (lambda t: _build_dir(t, "icebreaker", ".bin"), ["--board", "nosuchboard"], "icebreaker"),
])
def test_bad_input_exits_2_in_words(tmp_path, setup, args, words):
    path = setup(tmp_path)
    r = _shiftacc("program", str(path), *args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert words in r.stderr
