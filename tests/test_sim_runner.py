"""The simulation runner: one build per design, deadlines instead of hangs, no stray children,
no leftover run folders, a bounded build cache.

Every test here uses the same tiny network, so the whole file costs one Verilator build (and
reuses it from ``build/sim-cache`` on later runs).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from shiftacc.hw.plan import load_config, plan_network
from shiftacc.models.artifact import save_artifact
from shiftacc.models.netgen import random_model
from shiftacc.sim import runner
from shiftacc.sim.runner import cycle_budget, simulate
from shiftacc.sw import cache
from shiftacc.sw.cli import main
from shiftacc.sw.errors import Stalled


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("runner")
    rng = np.random.default_rng(21)
    model = save_artifact(d / "tiny.npz", random_model(rng, size=(4, 4), blocks=1, max_width=5))
    images = rng.integers(0, 256, (7,) + model.input_shape).astype(np.uint8)
    np.save(d / "x.npy", images)
    return model, d / "tiny.npz", images


@pytest.fixture()
def private_tmp(tmp_path, monkeypatch):
    """Temporary run folders go to this test's own folder, so leftovers can be counted."""
    t = tmp_path / "tmp"
    t.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(t))
    return t


def test_one_build_serves_every_image_count(tiny, private_tmp):
    """Image count and batch size are run-time values: 2, 7 and batch 3 share one build."""
    model, path, images = tiny
    cfg = load_config()
    runs = []
    for n, batch in ((2, 64), (7, 64), (7, 3)):
        lines = []
        res = simulate(model, images[:n], model_path=path, config=cfg, batch_images=batch,
                       seed=1, log=lines.append)
        assert res["golden_mismatches"] == 0 and len(res["logits"]) == n
        runs.append((res["build_dir"], lines))
    assert len({b for b, _ in runs}) == 1
    for _, lines in runs[1:]:
        assert any("reusing cached" in l for l in lines), lines
        assert not any("building" in l for l in lines), lines
    # Passing runs leave no temporary run folder behind.
    assert list(private_tmp.iterdir()) == []
    assert res["workdir"] is None


def test_verilator_opt_policy(tiny, monkeypatch, capsys):
    """Short runs build at -O0, long ones (and servers, length unknown) at -Os; the
    environment forces a level, and a level that is not one is refused (exit 2)."""
    monkeypatch.delenv("SHIFTACC_VERILATOR_OPT", raising=False)
    assert runner.verilator_opt(1000) == "-O0"
    assert runner.verilator_opt(runner.FAST_BUILD_MAX_CYCLES - 1) == "-O0"
    assert runner.verilator_opt(runner.FAST_BUILD_MAX_CYCLES) == "-Os"
    assert runner.verilator_opt(None) == "-Os"
    monkeypatch.setenv("SHIFTACC_VERILATOR_OPT", "-O2")
    assert runner.verilator_opt(1000) == "-O2" and runner.verilator_opt(None) == "-O2"
    monkeypatch.setenv("SHIFTACC_VERILATOR_OPT", "-O9")
    with pytest.raises(ValueError, match="SHIFTACC_VERILATOR_OPT"):
        runner.verilator_opt(1000)
    model, path, images = tiny
    capsys.readouterr()
    assert main(["sim", str(path), "--images", str(path.parent / "x.npy")]) == 2
    assert "SHIFTACC_VERILATOR_OPT='-O9' is not one of" in capsys.readouterr().err


def test_short_run_is_built_at_O0_and_a_cached_Os_build_serves_it(tiny, tmp_path, monkeypatch):
    """The short runs above compiled their C++ at -O0; once an -Os build of the same design
    is in the cache (here: that build's files under the -Os name), a short run takes it."""
    model, path, images = tiny
    monkeypatch.setenv("SHIFTACC_CACHE", str(tmp_path / "cache"))
    res = simulate(model, images[:2], model_path=path, config=load_config(), seed=1)
    b0 = Path(res["build_dir"])
    assert "-O0-" in b0.name
    # The design's own C++ (not cocotb's main): the last -O flag of each compile wins.
    compiles = [l.split() for l in (b0 / "build.log").read_text().splitlines()
                if " -c " in l and l.split()[-1].startswith("Vtop")]
    assert len(compiles) >= 3
    assert all([w for w in c if w.startswith("-O")][-1] == "-O0" for c in compiles), compiles
    os_dir = b0.with_name(b0.name.replace("-O0-", "-Os-"))
    shutil.copytree(b0, os_dir)
    lines = []
    res = simulate(model, images[:2], model_path=path, config=load_config(), seed=1,
                   log=lines.append)
    assert Path(res["build_dir"]) == os_dir and res["golden_mismatches"] == 0
    assert any("reusing cached" in l for l in lines), lines


def test_second_design_takes_the_precompiled_runtime_objects(tiny, tmp_path, monkeypatch):
    """Verilator's runtime objects (verilated*.o, cocotb's main) are the same for every
    design: the first build compiles and stores them, a build of another design copies them
    (sim/objcache.py) and compiles only its own C++, and still simulates exactly."""
    model, path, images = tiny
    monkeypatch.setenv("SHIFTACC_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OBJCACHE", raising=False)
    other = save_artifact(tmp_path / "other.npz", random_model(
        np.random.default_rng(22), size=(3, 5), blocks=1, max_width=4))
    logs = []
    for m, p in ((model, path), (other, tmp_path / "other.npz")):
        x = np.random.default_rng(5).integers(0, 256, (2,) + m.input_shape).astype(np.uint8)
        res = simulate(m, x, model_path=p, config=load_config(), seed=1)
        assert res["golden_mismatches"] == 0
        logs.append((Path(res["build_dir"]) / "build.log").read_text())
    runtime = {"verilated.o", "verilated_vpi.o", "verilated_threads.o", "verilator.o"}
    stored = {l.split()[-1] for l in logs[0].splitlines() if l.startswith("[objcache] stored")}
    hits = {l.split()[-1] for l in logs[1].splitlines() if l.startswith("[objcache] hit")}
    assert runtime <= stored and runtime <= hits, (stored, hits)
    assert not any(n.startswith("Vtop") for n in stored | hits)   # the design's own C++
    assert not any(l.startswith("[objcache] stored") for l in logs[1].splitlines())
    kept = {b["path"].name: b["complete"] for b in cache.builds(tmp_path / "cache")}
    assert kept[runner.OBJECT_STORE], kept


def test_cli_sim_reuses_the_build_for_another_count(tiny, tmp_path, capsys):
    model, path, images = tiny
    for n in ("3", "5"):
        assert main(["sim", str(path), "--images", str(path.parent / "x.npy"), "--limit", n,
                     "--seed", "2"]) == 0
        out = capsys.readouterr().out
        assert "reusing cached" in out and "building" not in out, out
        assert f"{n} images on verilator" in out


def test_cli_sim_does_not_import_torch(tiny):
    """``shiftacc sim`` needs neither torch nor scikit-learn (with --images)."""
    model, path, images = tiny
    code = ("import json, sys\nfrom shiftacc.sw.cli import main\n"
            f"status = main(['-q', 'sim', {str(path)!r}, '--images', "
            f"{str(path.parent / 'x.npy')!r}, '--limit', '2'])\n"
            "print('PROBE' + json.dumps([status, 'torch' in sys.modules, "
            "'sklearn' in sys.modules]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=900)
    line = [l for l in proc.stdout.splitlines() if l.startswith("PROBE")]
    assert line, proc.stderr[-2000:]
    assert json.loads(line[-1][5:]) == [0, False, False], proc.stdout[-2000:]


def _budget_cycles(model, path, n):
    plan = plan_network(model, load_config())
    b = cycle_budget(plan, model)
    return b["params"] + b["fill"] + n * b["per_image"]


@pytest.mark.parametrize("protocol", [False, True], ids=["bulk", "protocol"])
def test_stalled_design_fails_by_its_deadline_naming_the_stage(tiny, private_tmp, protocol):
    """The logit sink never takes data: a Stalled error within the cycle deadline, naming
    the classifier as the last stage that moved data and the sink as what it waits on."""
    model, path, images = tiny
    t0 = time.perf_counter()
    with pytest.raises(Stalled) as info:
        simulate(model, images[:5], model_path=path, config=load_config(), seed=3,
                 hold_logits=True, test="protocol_run" if protocol else "fast_run",
                 p_stall=0.0, log=lambda *a: None)
    wall = time.perf_counter() - t0
    stall = info.value.result["stall"]
    last = max(i for i, l in enumerate(model.layers))
    assert stall["last_moving_layer"] == last, stall
    assert "logit sink" in stall["waits_on"] and not stall["still_moving"]
    assert f"layer {last} (conv1x1" in str(info.value)
    # Simulated time stays within the deadline (+ the watch window), wall time is short.
    limit = _budget_cycles(model, path, 5) + stall["watched_cycles"] + 100
    assert info.value.result["sim_cycles"] <= limit
    assert wall < 120, wall
    # The run folder is kept (and named) for the logs.
    kept = list(private_tmp.iterdir())
    assert len(kept) == 1 and str(kept[0]) in str(info.value)


def test_cli_stall_exit_1_with_json(tiny, tmp_path, monkeypatch, capsys):
    model, path, images = tiny
    import shiftacc.sim.runner as runner
    real = runner.simulate
    monkeypatch.setattr(runner, "simulate", lambda *a, **k: real(*a, hold_logits=True, **k))
    out = tmp_path / "r.json"
    assert main(["sim", str(path), "--images", str(path.parent / "x.npy"), "--json", str(out),
                 "--workdir", str(tmp_path / "w")]) == 1
    err = capsys.readouterr().err
    assert "stalled" in err and "logit sink" in err
    assert json.loads(out.read_text())["stall"]["waits_on"].startswith("the logit sink")


def _children_of(pid):
    """Every live descendant of ``pid`` (from /proc), as {pid: command line}."""
    parent = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
                parent[int(p.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, frontier = {}, {pid}
    while frontier:
        kids = {c for c, pp in parent.items() if pp in frontier and c not in out}
        for c in kids:
            try:
                out[c] = Path(f"/proc/{c}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                out[c] = "?"
        frontier = kids
    return out


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def _comm(pid):
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _default_sigint():
    """In the child before exec: SIGINT back to its default disposition. A test run started
    in the background (``pytest ... &``) inherits SIGINT *ignored*, and Python then never
    raises KeyboardInterrupt; the CLI is tested as a user's foreground process sees it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("phase", ["build", "simulation"])
def test_sigint_to_cli_ends_every_child(tiny, tmp_path, phase):
    """SIGINT to the shiftacc process alone (not its group), while the compiler or the
    simulator runs: exit 130 within seconds and no process it started (runner, make, the C++
    compiler, the simulator) is left running."""
    model, path, _ = tiny
    rng = np.random.default_rng(4)
    many = rng.integers(0, 256, (20000,) + model.input_shape).astype(np.uint8)
    np.save(tmp_path / "many.npy", many)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if phase == "build":
        env["SHIFTACC_CACHE"] = str(tmp_path / "fresh-cache")  # nothing cached: it builds
    proc = subprocess.Popen(["shiftacc", "sim", str(path), "--images", str(tmp_path / "many.npy"),
                             "--protocol", "--seed", "5"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, preexec_fn=_default_sigint)
    seen = {}
    try:
        deadline = time.monotonic() + 600  # a first build of the tiny design, if not cached
        while time.monotonic() < deadline:
            kids = _children_of(proc.pid)
            seen.update(kids)
            names = {_comm(k) for k in kids}
            if phase == "build" and "cc1plus" in names:
                break  # the C++ compiler runs under make
            if phase == "simulation" and any("shiftacc_sim" in c for c in kids.values()):
                break  # the Verilated simulator runs
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
        else:
            pytest.fail(f"the {phase} never started")
        time.sleep(0.5)
        seen.update(_children_of(proc.pid))
        os.kill(proc.pid, signal.SIGINT)
        t0 = time.monotonic()
        status = proc.wait(timeout=20)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = proc.stdout.read()
    proc.stdout.close()  # closed here, not by the garbage collector (a ResourceWarning)
    print(f"SIGINT during the {phase} -> exit {status} in {took:.2f} s; children were: {seen}")
    assert status == 130, output
    assert took < 10
    assert "interrupted" in output
    time.sleep(0.5)
    left = {p: c for p, c in seen.items() if _alive(p)}
    assert not left, f"still running after shiftacc exited: {left}"


# -- the build cache (no simulator needed) ------------------------------------------------

def _fake_build(root, name, mb, age_s, now):
    d = root / name
    d.mkdir(parents=True)
    (d / "blob").write_bytes(b"\0" * (mb << 20))
    (d / cache.BUILT_STAMP).write_text("ok\n")
    (d / cache.USED_STAMP).touch()
    os.utime(d / cache.USED_STAMP, (now - age_s, now - age_s))
    return d


def test_cache_prunes_least_recently_used(tmp_path):
    now = time.time()
    old = _fake_build(tmp_path, "verilator-old", 3, 86400, now)
    mid = _fake_build(tmp_path, "verilator-mid", 3, 7200, now)
    busy = _fake_build(tmp_path, "verilator-busy", 3, 60, now)  # in use right now
    keep = _fake_build(tmp_path, "verilator-keep", 3, 99999, now)
    removed = cache.prune(keep=[keep], root=tmp_path, limit=7 << 20, now=now)
    assert removed == [old, mid]
    assert busy.exists() and keep.exists()
    # Touching marks use.
    cache.touch(keep)
    assert [b["path"] for b in cache.builds(tmp_path)][-1] == keep


def test_cache_limit_from_environment(monkeypatch):
    monkeypatch.setenv("SHIFTACC_CACHE_MAX_MB", "5")
    assert cache.max_bytes() == 5 << 20
    monkeypatch.setenv("SHIFTACC_CACHE_MAX_MB", "lots")
    with pytest.raises(ValueError, match="SHIFTACC_CACHE_MAX_MB"):
        cache.max_bytes()
    monkeypatch.delenv("SHIFTACC_CACHE_MAX_MB")
    assert cache.max_bytes() == 2048 << 20


def test_cache_command(tmp_path, monkeypatch, capsys):
    now = time.time()
    monkeypatch.setenv("SHIFTACC_CACHE", str(tmp_path))
    _fake_build(tmp_path, "icarus-aaaa", 1, 100, now)
    _fake_build(tmp_path, "verilator-bbbb", 2, 50, now)
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert "2 builds" in out and "icarus-aaaa" in out and "verilator-bbbb" in out
    assert out.index("icarus-aaaa") < out.index("verilator-bbbb")  # least recently used first
    assert main(["cache", "clear"]) == 0
    assert "removed 2 builds" in capsys.readouterr().out
    assert cache.builds(tmp_path) == []
    monkeypatch.setenv("SHIFTACC_CACHE_MAX_MB", "-3")
    assert main(["cache"]) == 2


def test_build_lock_wait_is_bounded(tmp_path):
    """A build lock held elsewhere (another run's build) is waited for, but not forever."""
    import fcntl

    from shiftacc.sim.runner import _locked
    from shiftacc.sw.errors import BuildFailed
    lock = tmp_path / ".design.lock"
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        t0 = time.monotonic()
        with pytest.raises(BuildFailed, match="locked"):
            with _locked(lock, 1.0):
                pass
        assert time.monotonic() - t0 < 30
    with _locked(lock, 1.0):  # free again: taken at once
        pass
