"""``shiftacc report``: the folder of a tiny trained model + plan, hand-written build reports,
sim JSON and explore rows; its tables against figures computed here; bad inputs (exit 2);
the folder replaced atomically; and the page opened in a real headless Chromium (every
``<img>`` loaded and decoded)."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from shiftacc.sw.cli import main

pytest.importorskip("matplotlib")

#: Chromium's whole run (start, load, dump) must end by then, or the test fails.
BROWSER_TIMEOUT = 90


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny model trained here (4 epochs, held-out split: every history column), and the
    same artifact without its history (an artifact from before history was recorded)."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from shiftacc.models.artifact import load_artifact, save_artifact
    from shiftacc.models.train import train_model
    d = tmp_path_factory.mktemp("models")
    _, model = train_model("digits", method="grouped", preset="digits-xs", epochs=4, seed=0,
                           progress=False, val_fraction=0.1)
    save_artifact(d / "tiny.npz", model)
    old = load_artifact(d / "tiny.npz")
    old.provenance.pop("history")
    old.name = "tiny-old"
    save_artifact(d / "old.npz", old)
    return d / "tiny.npz", d / "old.npz"


def _build_report(folder, board, seed, fmax, clock, lut, dsp):
    folder.mkdir(parents=True)
    rep = {"board": board, "device": "LFE5U-25F", "family": "ecp5", "target_mhz": clock,
           "clock_mhz": clock, "fmax_mhz": fmax, "timing_met": fmax >= clock,
           "utilization": {"LUT": {"used": lut, "available": 24288},
                           "FF": {"used": lut // 2, "available": 24288},
                           "RAM": {"used": 3, "available": 56},
                           "DSP": {"used": dsp, "available": 28}},
           "cycles_per_image": 200, "images_per_second": fmax * 1e6 / 200,
           "multipliers": dsp, "seed": seed, "build_seconds": 12.5}
    (folder / "build_report.json").write_text(json.dumps(rep))
    return rep


def _explore_rows(rng):
    """Random ok rows over boards x budgets x seeds, plus a refused one."""
    rows = []
    for board in ("ulx3s-12f", "ulx3s-85f"):
        for budget in (8, 16, 32):
            for seed in (1, 2, 3):
                fmax = float(rng.uniform(25, 60))
                cyc = int(rng.integers(100, 5000))
                rows.append({"key": f"{board}-{budget}-{seed}", "status": "ok", "message": None,
                             "board": board, "engine": "dataflow", "budget": budget,
                             "seed": seed, "multipliers": budget,
                             "LUT_used": int(rng.integers(1000, 20000)), "LUT_available": 24288,
                             "DSP_used": int(rng.integers(1, 28)), "DSP_available": 28,
                             "target_mhz": 35.0, "fmax_mhz": fmax, "timing_met": fmax >= 35,
                             "cycles_per_image": cyc, "images_per_second": fmax * 1e6 / cyc,
                             "mac_efficiency": float(rng.uniform(0.5, 1)),
                             "wall_seconds": 3.0})
    rows.append({"key": "ulx3s-12f-64-1", "status": "refused", "board": "ulx3s-12f",
                 "engine": "dataflow", "budget": 64, "seed": 1,
                 "message": "needs 70 DSP, the device has 28"})
    return rows


def _front(points):
    """Pareto front by a sweep (fewest resources first, keep what raises the best rate):
    another algorithm than the report's pairwise test."""
    best, out = -1.0, []
    for r, v in sorted(points, key=lambda p: (p[0], -p[1])):
        if v > best:
            out.append((r, v))
            best = v
    return out


def _tables(doc):
    return {t["title"] + "@" + s["anchor"]: t for s in doc["sections"] for t in s["tables"]}


def _png_ok(path):
    import matplotlib.image as mpimg
    img = mpimg.imread(path)
    return img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


@pytest.fixture(scope="module")
def full(models, tmp_path_factory, request):
    """One report of everything: both models, three build reports (folder and file
    inputs), an explore folder and a sim JSON, with random figures."""
    from shiftacc.sim.streamtb import BASE_SEED, derive_seed
    seed = derive_seed(request.node.nodeid + "::full")
    print(f"[seed] full report: seed {seed} (SHIFTACC_SEED={BASE_SEED})")
    tiny, old = models
    tmp_path = tmp_path_factory.mktemp("full")
    rng = np.random.default_rng(seed)
    fmaxes = [float(f) for f in rng.uniform(30, 50, size=3)]
    for k, f in enumerate(fmaxes):
        rep = _build_report(tmp_path / f"b{k}", "ulx3s-25f", k + 1, f, 35.0,
                            int(rng.integers(3000, 9000)), int(rng.integers(1, 28)))
    # The third build placed and routed seeds 3 and 5 (kept 3) and failed to place seed 4.
    f5 = float(rng.uniform(30, 50))
    rep["seeds"] = [{"seed": 3, "placed": True, "fmax_mhz": fmaxes[2]},
                    {"seed": 4, "placed": False, "fmax_mhz": None, "error": "no placement"},
                    {"seed": 5, "placed": True, "fmax_mhz": f5}]
    (tmp_path / "b2" / "build_report.json").write_text(json.dumps(rep))
    fmaxes.append(f5)
    rows = _explore_rows(rng)
    (tmp_path / "ex").mkdir()
    (tmp_path / "ex" / "results.json").write_text(json.dumps({"meta": {}, "rows": rows}))
    sim = {"logits": [[1, 2]], "golden_mismatches": 0, "cycles_per_image": 250.0,
           "predicted_cycles_per_image": 240, "ideal_cycles_per_image": 210.5, "images": 4,
           "simulator": "verilator", "mac_efficiency": 0.84, "accuracy": 0.75}
    (tmp_path / "sim.json").write_text(json.dumps(sim))
    out = tmp_path / "rep"
    argv = ["report", str(tiny), str(old), str(tmp_path / "b0"),
            str(tmp_path / "b1" / "build_report.json"), str(tmp_path / "b2"),
            str(tmp_path / "ex"), str(tmp_path / "sim.json"), "--out", str(out)]
    assert main(argv) == 0
    return tmp_path, out, rows, fmaxes


def test_report_of_everything(models, full):
    tiny, _ = models
    tmp_path, out, rows, fmaxes = full
    page = (out / "index.html").read_text()
    doc = json.loads((out / "report.json").read_text())
    # Every plot named in the page exists and decodes; no stray temporary folder is left.
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) >= 10, srcs
    for s in srcs:
        assert (out / s).is_file() and _png_ok(out / s), s
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rep.")]
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "no training history in this artifact" in page
    tables = _tables(doc)
    # Training history: the artifact's own lists, every epoch, phases in schedule order.
    from shiftacc.models.artifact import load_artifact
    model = load_artifact(tiny)
    hist = model.provenance["history"]
    assert hist["epoch"] == [1, 2, 3, 4]
    assert hist["phase"][0] == "search" and hist["phase"][-1] == "qat"
    assert all(0 <= a <= 1 for a in hist["train_accuracy"] + hist["val_accuracy"])
    assert all(x > 0 for x in hist["loss"] + hist["images_per_second"])
    t = tables["per epoch@m1-training"]
    assert [r[t["header"].index("loss")] for r in t["rows"]] == hist["loss"]
    assert [r[t["header"].index("val accuracy")] for r in t["rows"]] == hist["val_accuracy"]
    # Plan: cycles per stage, and the ideal = MACs / multipliers computed here.
    from shiftacc.hw.plan import plan_network
    plan = plan_network(model)
    t = tables["stages@m1-plan"]
    h = t["header"]
    assert [r[h.index("cycles/image")] for r in t["rows"]] == [s.cycles for s in plan.stages]
    for r in t["rows"]:
        macs, mults = r[h.index("MACs")], r[h.index("multipliers")]
        want = round(macs / mults, 2) if macs and mults else None
        assert r[h.index("ideal cycles")] == want
    t = tables["resources per block@m1-blocks"]
    assert t["rows"][-1][1] == sum(r[1] for r in t["rows"][:-1]) == plan.multipliers
    # Shift histograms: per layer, the channels of every shift layer.
    t = tables["shift layers@m1-shifts"]
    assert [r[1] for r in t["rows"]] == [len(layer.shifts) for layer in model.layers
                                         if layer.op == "shift"]
    # Builds: Fmax over seeds from the three hand-written reports.
    t = tables["Fmax over seeds@builds-fmax"]
    (row,) = t["rows"]
    assert row[1] == 4 and row[2] == round(min(fmaxes), 2) and row[4] == round(max(fmaxes), 2)
    assert row[6] == "1, 2, 3, 5"
    assert len(tables["build reports@builds"]["rows"]) == 3
    # Explore: one Fmax line per (board, engine, budget) over its 3 seeds; Pareto fronts.
    t = tables["Fmax over seeds@e6-fmax"]
    assert len(t["rows"]) == 6 and all(r[1] == 3 for r in t["rows"])
    ok = [r for r in rows if r["status"] == "ok"]
    for res in ("LUT", "DSP"):
        t = tables[f"Pareto front, images/s vs {res}@e6-pareto"]
        got = [(r[4], r[5]) for r in t["rows"]]
        assert got == _front([(r[f"{res}_used"], r["images_per_second"]) for r in ok]), res
    t = tables["every point@e6-rows"]
    assert len(t["rows"]) == len(rows)
    assert any(r[4] == "refused" and "needs 70 DSP" in r[-1] for r in t["rows"])
    # Sim: its numbers as given.
    t = tables["results@runs"]
    assert t["rows"][0][3:8] == [0, 0.75, 250.0, 240, 210.5]


def test_replace_needs_force_and_failure_keeps_the_old(tmp_path, capsys, monkeypatch):
    """An existing report is replaced only with --force; an interrupted one leaves the old
    folder as it was and no temporary folder."""
    (tmp_path / "in").mkdir()
    a = _build_report(tmp_path / "in" / "a", "ulx3s-25f", 1, 40.0, 35.0, 5000, 9)
    _build_report(tmp_path / "in" / "b", "ulx3s-25f", 2, 30.0, 35.0, 6000, 9)
    out = tmp_path / "rep"
    assert main(["report", str(tmp_path / "in" / "a"), "--out", str(out), "-q"]) == 0
    doc = json.loads((out / "report.json").read_text())
    assert _tables(doc)["build reports@builds"]["rows"][0][5] == a["fmax_mhz"]
    capsys.readouterr()
    assert main(["report", str(tmp_path / "in" / "b"), "--out", str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert json.loads((out / "report.json").read_text()) == doc
    import shiftacc.sw.report as report
    real = report._html

    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(report, "_html", boom)
    assert main(["report", str(tmp_path / "in" / "b"), "--out", str(out), "--force",
                 "-q"]) == 130
    assert json.loads((out / "report.json").read_text()) == doc
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "rep"]
    monkeypatch.setattr(report, "_html", real)
    assert main(["report", str(tmp_path / "in" / "b"), "--out", str(out), "--force",
                 "-q"]) == 0
    doc = json.loads((out / "report.json").read_text())
    assert _tables(doc)["build reports@builds"]["rows"][0][5] == 30.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "rep"]


def test_regress_results(tmp_path, seed):
    """A regress results.json: every network in the table, mismatches counted, plot drawn."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(7):
        pred = int(rng.integers(50, 5000))
        bad = k == 3
        rows.append({"seed": 100 + k, "status": "mismatch" if bad else "ok",
                     "layers": "s-c-g-c", "mismatches": 2 if bad else 0,
                     "stalled_mismatches": 1 if bad else 0, "images": 8,
                     "predicted_cycles_per_image": pred,
                     "measured_cycles_per_image": pred + int(rng.integers(0, 3)),
                     "message": "3 images differ" if bad else None})
    (tmp_path / "rg").mkdir()
    (tmp_path / "rg" / "results.json").write_text(
        json.dumps({"meta": {"command": "regress"}, "rows": rows}))
    out = tmp_path / "rep"
    assert main(["report", str(tmp_path / "rg"), "--out", str(out), "-q"]) == 0
    doc = json.loads((out / "report.json").read_text())
    (sec,) = doc["sections"]
    assert sec["notes"] == ["7 networks: 6 ok, 1 mismatched or failed; 3 images differ from "
                            "the golden model in all."]
    (t,) = sec["tables"]
    assert [r[0] for r in t["rows"]] == [r["seed"] for r in rows]
    assert [r[12] for r in t["rows"]] == [r["measured_cycles_per_image"] for r in rows]
    assert _png_ok(out / sec["plots"][0])


def test_odd_values_are_drawn_around_not_crashed_on(models, tmp_path):
    """Provenance is free-form and reports may be hand-edited: values that are not numbers
    are left out of the plots (shown as they are in the tables), never an internal error."""
    from shiftacc.models.artifact import load_artifact, save_artifact
    _, old = models
    m = load_artifact(old)
    m.provenance["history"] = {"epoch": ["one", "two"], "loss": [1.0, 0.5]}
    m.provenance["int_accuracy"] = "high"
    save_artifact(tmp_path / "odd.npz", m)
    rep = {"board": "b", "utilization": {"LUT": {"used": "many", "available": 10},
                                         "DSP": {"used": 3, "available": 0}},
           "fmax_mhz": "fast", "seed": [1], "clock_mhz": None}
    (tmp_path / "odd.json").write_text(json.dumps(rep))
    out = tmp_path / "rep"
    assert main(["report", str(tmp_path / "odd.npz"), str(tmp_path / "odd.json"), "--out",
                 str(out), "-q"]) == 0
    page = (out / "index.html").read_text()
    assert "no training history in this artifact" in page and "fast" in page


def test_without_matplotlib_exit_3_and_nothing_written(tmp_path, monkeypatch, capsys):
    import sys
    _build_report(tmp_path / "b", "ulx3s-25f", 1, 40.0, 35.0, 100, 1)
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib fails
    out = tmp_path / "rep"
    assert main(["report", str(tmp_path / "b"), "--out", str(out)]) == 3
    assert "pip install 'shiftacc[report]'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize("case", ["missing", "json", "empty_dir", "fake_npz", "text",
                                  "foreign_out", "out_is_input", "regress_json"])
def test_bad_input_is_exit_2_in_words(case, tmp_path, models, capsys):
    _, old = models
    out = tmp_path / "rep"
    inp = tmp_path / "in.json"
    want = None
    if case == "missing":
        inp, want = tmp_path / "nope.npz", "does not exist"
    elif case == "json":
        inp.write_text(json.dumps({"hello": 1}))
        want = "not a build report"
    elif case == "empty_dir":
        inp = tmp_path / "d"
        inp.mkdir()
        want = "a folder without build_report.json"
    elif case == "fake_npz":
        inp = tmp_path / "m.npz"
        inp.write_bytes(b"not a zip at all")
        want = "not a readable .npz artifact"
    elif case == "text":
        inp = tmp_path / "m.txt"
        inp.write_text("hello")
        want = "not a model artifact (.npz)"
    elif case == "foreign_out":
        inp = old
        out.mkdir()
        (out / "precious.txt").write_text("keep me")
        want = "did not write"
    elif case == "out_is_input":
        (tmp_path / "b").mkdir()
        _build_report(tmp_path / "b" / "x", "ulx3s-25f", 1, 40.0, 35.0, 100, 1)
        inp, out = tmp_path / "b" / "x", tmp_path / "b"
        want = "holds the input"
    elif case == "regress_json":
        inp.write_text(json.dumps({"meta": {}, "rows": [{"seed": 1, "status": "ok"}]}))
        want = "not a build report"
    assert main(["report", str(inp), "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert "shiftacc report: error:" in err and want in err, err
    if case == "foreign_out":
        assert (out / "precious.txt").read_text() == "keep me"
    elif case != "out_is_input":
        assert not out.exists()


_CHECK = ('<img src="missing-on-purpose.png" alt="x"><script>window.addEventListener("load",'
          'function(){var im=document.images,ok=0;for(var i=0;i<im.length;i++){if(im[i].'
          'complete&&im[i].naturalWidth>0)ok++;}var d=document.createElement("div");d.id='
          '"imgcheck";d.setAttribute("data-total",im.length);d.setAttribute("data-ok",ok);'
          'document.body.appendChild(d);});</script></body>')


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_page_in_headless_chromium(full, tmp_path):
    """The page loads offline and every <img> is in the DOM, loaded and decoded.

    The check page is the report's own index.html plus one image that does not exist (so the
    count can be seen to fail) and a script that writes the counts into the DOM at 'load'.
    """
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium: apt-get install -y chromium")
    out = full[1]
    page = (out / "index.html").read_text()
    n = len(re.findall(r"<img ", page))
    assert n >= 10
    (out / "_check.html").write_text(page.replace("</body>", _CHECK))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--virtual-time-budget=10000",
             f"--user-data-dir={tmp_path / 'profile'}"]
    try:
        dom = subprocess.run(flags + ["--dump-dom", (out / "_check.html").as_uri()],
                             capture_output=True, text=True, timeout=BROWSER_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"Chromium did not finish within {BROWSER_TIMEOUT} s")
    m = re.search(r'<div id="imgcheck" data-total="(\d+)" data-ok="(\d+)"', dom.stdout)
    assert m, (dom.returncode, dom.stdout[-500:], dom.stderr[-2000:])
    assert (int(m[1]), int(m[2])) == (n + 1, n)   # every plot decoded; the missing one not
    shot = tmp_path / "shot.png"
    try:
        subprocess.run(flags + ["--hide-scrollbars", "--window-size=1280,2000",
                                f"--screenshot={shot}", (out / "index.html").as_uri()],
                       capture_output=True, timeout=BROWSER_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"Chromium's screenshot did not finish within {BROWSER_TIMEOUT} s")
    assert _png_ok(shot)
