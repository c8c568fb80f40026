"""``shiftacc report``: a static HTML report (one folder, opens offline) with plots and tables.

Inputs are recognised by what they are, not by a flag (:func:`load_input`):

- a model artifact (``.npz``): training curves from ``provenance.history``
  (:mod:`models.train` records it), the dataflow plan of the artifact (per-stage cycles
  against the ideal ``MACs / multipliers`` of DESIGN.md §3, multipliers and memory bits per
  block, from the blocks' own :class:`~hw.resources.Cost`), and a shift histogram per shift
  layer;
- a build folder or its ``build_report.json`` (``shiftacc build``): resources used of
  available per device, Fmax (over seeds when several builds are given);
- a ``shiftacc sim --json`` or ``shiftacc run --json`` file: cycles per image measured
  against predicted and ideal, mismatches, accuracy, images/s;
- an explore folder or its ``results.json`` (``shiftacc explore``): the rows, cycles per
  image against multipliers of the planned designs, Fmax over nextpnr seeds, and the
  images/s vs LUT and vs DSP Pareto fronts (:func:`shiftacc.sw.explore.pareto`);
- a regress folder or its ``results.json`` (``shiftacc regress``): mismatches and measured
  against predicted cycles per image of every random network.

The output is one folder: ``index.html`` (no script, no external style sheet or font: it
opens from the disk without a network), one PNG per plot (matplotlib's Agg backend), and
``report.json`` with every table's numbers. Each plot has its numbers in a table beside
it. The folder is written into a temporary folder next to ``--out`` and renamed at the end,
so an interrupted report leaves the previous one (or nothing) in place.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError

__all__ = ["Source", "load_input", "write_report", "explore_rows", "regress_rows",
           "REPORT_MARKER"]

#: Written into every report's ``report.json``; ``--force`` replaces only a folder that has
#: it (or an empty folder), never an unrelated folder named by mistake.
REPORT_MARKER = "shiftacc-report"

#: Resources of a device as ``shiftacc build`` names them (build_report.json "utilization").
RESOURCES = ("LUT", "FF", "RAM", "DSP")


@dataclass
class Source:
    """One recognised input.

    Attributes
    ----------
    kind : str
        ``model``, ``build``, ``sim``, ``run``, ``explore`` or ``regress``.
    path : Path
        The file the data came from (``build_report.json`` / ``results.json`` inside a
        folder).
    data : object
        A :class:`~models.artifact.Model`, or the parsed JSON (explore: the list of rows).
    label : str
        How the report names it (the model's name, else the file name).
    config : hw.plan.PlanConfig or None
        ``model``: the parallelism config its plan is drawn with (None: the defaults).
    """

    kind: str
    path: Path
    data: object = None
    label: str = ""
    config: object = None


# --------------------------------------------------------------------------------------
# Inputs


def _bad(path, why):
    return UsageError(f"input {path}: {why}")


def _read_json(path):
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError:
        raise _bad(path, "is not a text (JSON) file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _bad(path, f"is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") \
            from None


def explore_rows(data):
    """The rows of an explore ``results.json``: a list of row objects, or an object holding
    them under ``rows``/``points``/``results``; None when ``data`` is neither."""
    rows = data
    if isinstance(data, dict):
        rows = next((data[k] for k in ("rows", "points", "results") if isinstance(
            data.get(k), list)), None)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return None
    if rows and not any("board" in r and ("fmax_mhz" in r or "status" in r or "budget" in r)
                        for r in rows):
        return None
    return rows


def regress_rows(data):
    """The rows of a ``shiftacc regress`` ``results.json`` (rows with ``mismatches`` or
    ``meta.command == "regress"``), or None."""
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        return None
    rows = data["rows"]
    if not all(isinstance(r, dict) for r in rows):
        return None
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    if meta.get("command") == "regress" or (rows and all("mismatches" in r for r in rows)):
        return rows
    return None


def _classify_json(path, data):
    if isinstance(data, dict) and "board" in data and "utilization" in data:
        return Source("build", path, data)
    if isinstance(data, dict) and "golden_mismatches" in data:
        kind = "run" if "design_id" in data or "device_cycles" in data else "sim"
        return Source(kind, path, data)
    rows = regress_rows(data)
    if rows is not None:
        return Source("regress", path, rows)
    rows = explore_rows(data)
    if rows is not None:
        return Source("explore", path, rows)
    keys = ", ".join(sorted(data)[:8]) if isinstance(data, dict) else type(data).__name__
    raise _bad(path, f"a JSON file, but not a build report (no 'board'/'utilization'), a "
                     f"sim or run result (no 'golden_mismatches'), explore results (no "
                     f"rows with 'board') or regress results (no rows with 'mismatches'); it "
                     f"holds: {keys or 'nothing'}")


def load_input(path):
    """Recognise and read one ``shiftacc report`` input.

    Parameters
    ----------
    path : str or Path
        An artifact ``.npz``; a build folder or ``build_report.json``; a sim/run JSON; an
        explore folder or ``results.json``.

    Returns
    -------
    Source

    Raises
    ------
    UsageError
        The path is missing, unreadable, or none of the above (the message says why).
    """
    path = Path(path)
    if not path.exists():
        raise _bad(path, "does not exist")
    if path.is_dir():
        for name in ("build_report.json", "results.json"):
            if (path / name).is_file():
                return load_input(path / name)
        raise _bad(path, "a folder without build_report.json (shiftacc build) or "
                         "results.json (shiftacc explore)")
    if not os.access(path, os.R_OK):
        raise _bad(path, "is not readable")
    if path.suffix == ".npz":
        from ..models.artifact import ArtifactError, load_artifact
        try:
            model = load_artifact(path)
        except ArtifactError as e:
            raise _bad(path, f"not a valid shiftacc artifact: {e}") from None
        except (OSError, ValueError) as e:
            raise _bad(path, f"not a readable .npz artifact: {e}") from None
        return Source("model", path, model)
    if path.suffix == ".json":
        return _classify_json(path, _read_json(path))
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        raise _bad(path, "looks like a .npz (zip) but is not named *.npz; rename it")
    raise _bad(path, "not a model artifact (.npz), a build folder or build_report.json, a "
                     "sim/run JSON or an explore folder or results.json")


# --------------------------------------------------------------------------------------
# Figures and tables


def _mpl():
    from .errors import require_extra
    mpl = require_extra("matplotlib", "report", "shiftacc report")
    mpl.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt
    return plt


def _num(v, digits=4):
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        if abs(v) >= 10 ** digits:
            return f"{v:,.0f}"
        if v != 0 and abs(v) < 10 ** -digits:
            return f"{v:.{digits}g}"
        return f"{v:.{digits}g}"
    return str(v)


@dataclass
class Table:
    """A table of the report: header, rows of cells (already JSON-able values)."""

    title: str
    header: list
    rows: list
    #: Tables longer than this are folded (``<details>``) in the page.
    FOLD = 16

    def to_html(self):
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_num(c))}</td>" for c in r)
                       + "</tr>" for r in self.rows)
        table = (f"<table><caption>{html.escape(self.title)}</caption><thead><tr>{head}</tr>"
                 f"</thead><tbody>{body}</tbody></table>")
        if len(self.rows) <= self.FOLD:
            return table
        # Long tables (60 epochs, a 100-network regression) fold away (HTML only, no
        # script); the numbers stay in the page and in report.json.
        return (f"<details><summary>{html.escape(self.title)}: {len(self.rows)} rows"
                f"</summary>{table}</details>")

    def to_dict(self):
        return {"title": self.title, "header": list(self.header), "rows": self.rows}


@dataclass
class Section:
    """A part of the page: a heading, notes, plots (file names) and tables."""

    title: str
    anchor: str
    notes: list = field(default_factory=list)
    plots: list = field(default_factory=list)   # (file name, alt text)
    tables: list = field(default_factory=list)


class _Writer:
    """Collects the sections and saves the figures into the (temporary) output folder."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.plt = _mpl()
        self.names = set()

    def save(self, fig, name, alt):
        base, n = name, 1
        while name in self.names:
            n += 1
            name = f"{base}-{n}"
        self.names.add(name)
        fig.savefig(self.folder / f"{name}.png", dpi=96, bbox_inches="tight")
        self.plt.close(fig)
        return (f"{name}.png", alt)


def _phase_spans(epochs, phases):
    spans, start = [], 0
    for i in range(1, len(phases) + 1):
        if i == len(phases) or phases[i] != phases[start]:
            spans.append((phases[start], epochs[start] - 0.5, epochs[i - 1] + 0.5))
            start = i
    return spans


def _history(model):
    """The per-epoch history of an artifact as columns, or None (older artifacts)."""
    h = (model.provenance or {}).get("history")
    if isinstance(h, list) and h and all(isinstance(r, dict) for r in h):  # list of records
        keys = list(dict.fromkeys(k for r in h for k in r))
        h = {k: [r.get(k) for r in h] for k in keys}
    if not isinstance(h, dict) or not isinstance(h.get("epoch"), list) or not h["epoch"]:
        return None
    n = len(h["epoch"])
    # Provenance is free-form: keep only the columns that can be drawn (numbers; the phase
    # names), so a hand-edited artifact cannot crash the plot.
    out = {k: v for k, v in h.items() if isinstance(v, list) and len(v) == n and (
        all(isinstance(x, str) for x in v) if k == "phase" else
        all(_is_num(x) for x in v))}
    return out if "epoch" in out else None


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_PHASE_COLOR = {"search": "#dbe9f6", "hard": "#e6f2dc", "qat": "#fbe3d0"}


def _model_sections(w, src, prefix):
    model, sections = src.data, []
    prov = model.provenance or {}
    # Training curves ------------------------------------------------------------------
    sec = Section(f"{src.label}: training", f"{prefix}-training")
    hist = _history(model)
    if hist is None:
        sec.notes.append("no training history in this artifact (it was written before "
                         "shiftacc recorded one, or not by shiftacc train)")
    else:
        ep = hist["epoch"]
        fig, (a1, a2) = w.plt.subplots(1, 2, figsize=(10, 3.6))
        for ax in (a1, a2):
            if "phase" in hist:
                for ph, lo, hi in _phase_spans(ep, hist["phase"]):
                    ax.axvspan(lo, hi, color=_PHASE_COLOR.get(ph, "#eeeeee"), lw=0)
                    if ax is a1:  # named once; the accuracy plot has the same colours
                        ax.text((lo + hi) / 2, 0.98, ph, ha="center", va="top", fontsize=7,
                                color="#555", transform=ax.get_xaxis_transform())
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        if "loss" in hist:
            a1.plot(ep, hist["loss"], "o-", ms=3, label="training loss")
        a1.set_ylabel("loss")
        a1.set_title("loss")
        for key, lab in (("train_accuracy", "train (running, augmented batches)"),
                         ("val_accuracy", "validation (held out)")):
            if key in hist:
                a2.plot(ep, hist[key], "o-", ms=3, label=lab)
        for key, lab, ls in (("int_accuracy", "integer test (golden)", "--"),
                             ("float_accuracy", "float test", ":")):
            if _is_num(prov.get(key)):
                a2.axhline(prov[key], ls=ls, color="k", lw=1, label=f"{lab} {prov[key]:.4f}")
        a2.set_ylabel("accuracy")
        a2.set_title("accuracy")
        a2.legend(fontsize=7, loc="lower right")
        sec.plots.append(w.save(fig, f"{prefix}-training", "training loss and accuracy per epoch"))
        cols = [k for k in ("epoch", "phase", "loss", "train_accuracy", "val_accuracy",
                            "images_per_second") if k in hist]
        sec.tables.append(Table("per epoch", [c.replace("_", " ") for c in cols],
                                [[hist[k][i] for k in cols] for i in range(len(ep))]))
    keys = [k for k in ("dataset", "method", "preset", "epochs", "seed", "float_accuracy",
                        "qat_accuracy", "int_accuracy", "val_accuracy", "train_seconds")
            if k in prov]
    sec.tables.append(Table("provenance", ["key", "value"], [[k, prov[k]] for k in keys]))
    sections.append(sec)
    # Plan: per-stage cycles and resources ---------------------------------------------------
    sections.extend(_plan_sections(w, src, prefix))
    # Shift histograms -----------------------------------------------------------------
    sections.append(_shift_section(w, src, prefix))
    return sections


def _plan_sections(w, src, prefix):
    from ..hw.plan import PlanError, _label, plan_network
    model = src.data
    sec = Section(f"{src.label}: dataflow plan, cycles per stage", f"{prefix}-plan")
    try:
        plan = plan_network(model, src.config)
    except PlanError as e:
        sec.notes.append(f"no dataflow plan for this artifact: {e}")
        return [sec]
    cfg = plan.config
    sec.notes.append(
        f"planned with max_multipliers {cfg['max_multipliers']}, radius {cfg['radius']} "
        f"({'the given --config' if src.config else 'the planner defaults'}; a board build "
        f"may plan for its device instead): {plan.multipliers} multipliers, "
        f"{plan.macs_per_image:,} MACs per image, predicted {plan.predicted_cycles_per_image} "
        f"cycles/image against the ideal {plan.ideal_cycles_per_image:.1f} (MACs / "
        f"multipliers), MAC efficiency {plan.predicted_mac_efficiency:.3f}.")
    stages = plan.stages
    names = [s.name if s.layer is not None else f"cvt{n}" for n, s in enumerate(stages)]
    cycles = [s.cycles for s in stages]
    ideal = [s.macs / s.multipliers if s.macs and s.multipliers else None for s in stages]
    fig, ax = w.plt.subplots(figsize=(max(6, 0.45 * len(stages) + 2), 3.8))
    x = range(len(stages))
    ax.bar(x, cycles, color="#4c72b0", label="stage cycles/image")
    xi = [i for i in x if ideal[i] is not None]
    ax.plot(xi, [ideal[i] for i in xi], "r_", ms=18, mew=2.5,
            label="stage ideal (stage MACs / stage multipliers)")
    ax.axhline(plan.ideal_cycles_per_image, color="r", ls="--", lw=1,
               label=f"design ideal {plan.ideal_cycles_per_image:.1f}")
    ax.axhline(plan.predicted_cycles_per_image, color="k", ls=":", lw=1,
               label=f"pipeline (slowest stage) {plan.predicted_cycles_per_image}")
    ax.set_xticks(list(x), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("cycles per image")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    sec.plots.append(w.save(fig, f"{prefix}-cycles", "cycles per image of every stage against "
                                                     "the ideal"))
    sec.tables.append(Table("stages", [
        "stage", "kind", "in HxWxC", "out HxWxC", "lanes in>out", "multipliers", "MACs",
        "cycles/image", "ideal cycles", "stage MAC efficiency"],
        [[nm, s.kind, "x".join(map(str, s.in_shape)), "x".join(map(str, s.out_shape)),
          f"{s.lanes_in}>{s.lanes_out}", s.multipliers, s.macs, s.cycles,
          None if idl is None else round(idl, 2),
          None if idl is None else round(s.macs / (s.multipliers * s.cycles), 4)]
         for nm, s, idl in zip(names, stages, ideal)]))
    # Resources per block.
    res = Section(f"{src.label}: resources per block (plan)", f"{prefix}-blocks")
    mem_bits = [sum(m.bits for m in s.memories(_label(n, s))) for n, s in enumerate(stages)]
    mults = [s.multipliers for s in stages]
    dsp = [s.dsp("ecp5") for s in stages]
    fig, (a1, a2) = w.plt.subplots(1, 2, figsize=(11, max(3, 0.28 * len(stages) + 1)),
                                   sharey=True)
    y = list(range(len(stages)))
    a1.barh(y, mults, color="#dd8452", label="multipliers")
    a1.barh(y, dsp, color="none", edgecolor="k", hatch="//", label="MULT18X18D (ECP5)")
    a1.set_yticks(y, names, fontsize=8)
    a1.invert_yaxis()
    a1.set_xlabel("hardware multipliers")
    a1.legend(fontsize=7, loc="lower right")
    a2.barh(y, mem_bits, color="#55a868")
    a2.set_xlabel("memory bits (block RAMs and output FIFO)")
    for ax in (a1, a2):
        ax.grid(axis="x", alpha=0.3)
    res.plots.append(w.save(fig, f"{prefix}-blocks", "multipliers and memory bits per block"))
    res.notes.append(f"total: {plan.resource_line()}; {plan.memory_bits:,} memory bits.")
    res.tables.append(Table("resources per block", [
        "stage", "multipliers", "MULT18X18D (ECP5)", "SB_MAC16 (iCE40)", "memories",
        "memory bits"],
        [[nm, m, d, s.dsp("ice40"), len(s.memories()), b]
         for nm, s, m, d, b in zip(names, stages, mults, dsp, mem_bits)]
        + [["total", plan.multipliers, plan.dsp("ecp5"), plan.dsp("ice40"),
            len(plan.memories()), plan.memory_bits]]))
    return [sec, res]


def _shift_section(w, src, prefix):
    from ..models.ops import OPS
    model = src.data
    sec = Section(f"{src.label}: shift histograms", f"{prefix}-shifts")
    layers = []
    for i, layer in enumerate(model.layers):
        h = OPS[layer.op].shift_histogram(layer)
        if h is not None:
            layers.append((i, layer, h))
    if not layers:
        sec.notes.append("this artifact has no shift layer")
        return sec
    r = max([1] + [max(abs(dy), abs(dx)) for _, _, h in layers for dy, dx in h])
    n = len(layers)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = w.plt.subplots(rows, cols, figsize=(2.6 * cols + 0.6, 2.5 * rows),
                               squeeze=False)
    import numpy as np
    for k, (i, layer, h) in enumerate(layers):
        ax = axes[k // cols][k % cols]
        grid = np.zeros((2 * r + 1, 2 * r + 1), dtype=int)
        for (dy, dx), c in h.items():
            grid[dy + r, dx + r] = c
        ax.imshow(grid, cmap="Blues", vmin=0, vmax=max(1, grid.max()), extent=(-r - 0.5, r + 0.5, r + 0.5, -r - 0.5))
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                c = grid[dy + r, dx + r]
                if c:
                    ax.text(dx, dy, str(c), ha="center", va="center", fontsize=8,
                            color="white" if c > 0.6 * grid.max() else "black")
        ax.set_title(f"layer {i} ({sum(h.values())} ch)", fontsize=9)
        ax.set_xticks(range(-r, r + 1))
        ax.set_yticks(range(-r, r + 1))
        ax.set_xlabel("dx", fontsize=8)
        ax.set_ylabel("dy", fontsize=8)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.tight_layout()
    sec.plots.append(w.save(fig, f"{prefix}-shifts", "channels per (dy, dx) shift, per layer"))
    sec.tables.append(Table("shift layers", [
        "layer", "channels", "zero shifts", "distinct shifts", "max |d|",
        "counts (dy,dx):n"],
        [[i, sum(h.values()), h.get((0, 0), 0), len(h),
          max(max(abs(a), abs(b)) for a, b in h),
          " ".join(f"({dy:+d},{dx:+d}):{c}" for (dy, dx), c in sorted(h.items()))]
         for i, _, h in layers]))
    return sec


def _util(row, name):
    """(used, available) of resource ``name`` in a build report or explore row."""
    used, avail = _util_raw(row, name)
    return (used if _is_num(used) else None), (avail if _is_num(avail) else None)


def _util_raw(row, name):
    u = row.get("utilization")
    if isinstance(u, dict) and isinstance(u.get(name), dict):
        return u[name].get("used"), u[name].get("available")
    low = name.lower()
    used = row.get(f"{low}_used", row.get(f"{name}_used"))
    avail = row.get(f"{low}_available", row.get(f"{name}_available"))
    if used is None and isinstance(row.get(name), dict):
        used, avail = row[name].get("used"), row[name].get("available")
    if used is None and isinstance(row.get(name), (int, float)):
        used = row[name]
    if used is None and isinstance(row.get(low), (int, float)):
        used = row[low]
    return used, avail


def _build_label(src):
    """``folder: board, clock, seed`` of a build report (two builds of one board differ by
    their folder or clock)."""
    d = src.data
    folder = src.path.parent.name if src.path.name == "build_report.json" else src.path.stem
    return (f"{folder}: {d.get('board', '?')} {_num(d.get('clock_mhz'))} MHz "
            f"seed {d.get('seed', '?')}")


def _build_sections(w, builds):
    sec = Section("builds: resources per device", "builds")
    labels = [_build_label(b) for b in builds]
    import numpy as np
    have = [r for r in RESOURCES if any(_util(b.data, r)[1] for b in builds)]
    if have:
        fig, ax = w.plt.subplots(figsize=(max(6, 1.6 * len(have) * max(1, len(builds)) / 2), 3.6))
        width = 0.8 / len(builds)
        for k, (b, lab) in enumerate(zip(builds, labels)):
            pct = []
            for r in have:
                used, avail = _util(b.data, r)
                pct.append(100.0 * used / avail if used is not None and avail else 0.0)
            xs = np.arange(len(have)) + k * width
            bars = ax.bar(xs, pct, width, label=lab)
            for bar, r in zip(bars, have):
                used, avail = _util(b.data, r)
                if used is not None:
                    ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(),
                            f"{used}/{avail}", ha="center", va="bottom", fontsize=6,
                            rotation=90 if len(builds) > 2 else 0)
        ax.set_xticks(np.arange(len(have)) + 0.4 - width / 2, have)
        ax.set_ylabel("% of the device used")
        ax.set_ylim(0, 115)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
        sec.plots.append(w.save(fig, "builds-resources", "resources used per device"))
    else:
        sec.notes.append("no utilization in these build reports (files-only builds: no tool "
                         "was run)")
    header = ["build report", "board", "device", "seed", "clock MHz", "Fmax MHz",
              "timing met", "cycles/image", "images/s at Fmax", "multipliers"] + \
             [f"{r} used/avail" for r in RESOURCES] + ["build s"]
    rows = []
    for b in builds:
        d = b.data
        rows.append([str(b.path), d.get("board"), d.get("device"), d.get("seed"),
                     d.get("clock_mhz"), d.get("fmax_mhz"), d.get("timing_met"),
                     d.get("cycles_per_image"), d.get("images_per_second"),
                     d.get("multipliers")]
                    + ["/".join(_num(v) for v in _util(d, r)) if _util(d, r)[0] is not None
                       else None for r in RESOURCES] + [d.get("build_seconds")])
    sec.tables.append(Table("build reports", header, rows))
    out = [sec]
    pts = []
    for b in builds:
        g = f"{b.data.get('board', '?')} at {_num(b.data.get('clock_mhz'))} MHz"
        # A multi-seed build (`--seed 1,2,3`) lists every seed it placed and routed.
        placed = [o for o in b.data.get("seeds") or () if o.get("placed")]
        pts += [(g, o.get("seed"), o.get("fmax_mhz"), b.data.get("clock_mhz")) for o in placed] \
            or [(g, b.data.get("seed"), b.data.get("fmax_mhz"), b.data.get("clock_mhz"))]
    fm = _fmax_section(w, "builds: Fmax over seeds", "builds-fmax", pts)
    if fm is not None:
        out.append(fm)
    return out


def _fmax_section(w, title, anchor, pts):
    """Fmax against the nextpnr seed, one series per design (board, engine, budget)."""
    pts = [p for p in pts if _is_num(p[2]) and p[1] is not None]
    if not pts:
        return None
    sec = Section(title, anchor)
    groups = {}
    for g, seed, fmax, target in pts:
        groups.setdefault(g, []).append((seed, fmax, target))
    fig, ax = w.plt.subplots(figsize=(7, 3.6))
    table = []
    for g, vals in groups.items():
        vals.sort(key=lambda v: (str(type(v[0])), v[0]))
        seeds = [v[0] for v in vals]
        fmaxes = [v[1] for v in vals]
        ax.plot([str(s) for s in seeds], fmaxes, "o-", label=str(g))
        targets = {v[2] for v in vals if _is_num(v[2])}
        for t in targets:
            ax.axhline(t, ls=":", lw=1, color="gray")
        lo, hi = min(fmaxes), max(fmaxes)
        table.append([str(g), len(vals), round(lo, 2), round(sum(fmaxes) / len(fmaxes), 2),
                      round(hi, 2), round(100 * (hi - lo) / lo, 1) if lo else None,
                      ", ".join(str(s) for s in seeds)])
    if len(pts) == 1:
        sec.notes.append("one build only: give several build reports (or an explore run "
                         "with --seeds N) to see the spread over seeds")
    ax.set_xlabel("nextpnr seed")
    ax.set_ylabel("Fmax (MHz)")
    ax.set_title("Fmax over placement seeds (dotted: target clock)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    sec.plots.append(w.save(fig, anchor, "Fmax over nextpnr seeds"))
    sec.tables.append(Table("Fmax over seeds", ["design", "seeds", "min MHz", "mean MHz",
                                                "max MHz", "spread %", "seed list"], table))
    return sec


def _row_ok(row):
    return row.get("status", "ok") in ("ok", None)


def _plan_points_section(w, src, prefix, ok):
    """Cycles per image and MAC efficiency against the multipliers of each planned design:
    known without place and route, so also for files-only (``--no-bitstream``) runs."""
    designs = {}
    for r in ok:
        if _is_num(r.get("multipliers")) and \
                _is_num(r.get("cycles_per_image")):
            k = (str(r.get("board")), r.get("engine") or "dataflow", r.get("budget"))
            designs.setdefault(k, r)
    if not designs:
        return None
    sec = Section(f"{src.label}: cycles per image vs multipliers (planned)", f"{prefix}-plans")
    fig, ax = w.plt.subplots(figsize=(7, 3.6))
    marks = {"dataflow": "o", "overlay": "s"}
    for board in sorted({k[0] for k in designs}):
        for eng in sorted({k[1] for k in designs if k[0] == board}):
            rs = sorted((r for k, r in designs.items() if k[:2] == (board, eng)),
                        key=lambda r: r["multipliers"])
            ax.plot([r["multipliers"] for r in rs], [r["cycles_per_image"] for r in rs],
                    marker=marks.get(eng, "^"), label=f"{board} {eng}")
    xs = [r["multipliers"] for r in designs.values()]
    ys = [r["cycles_per_image"] for r in designs.values()]
    # Budgets grow geometrically (16, 32, 64, ...): log axes when they span a decade.
    from matplotlib.ticker import ScalarFormatter
    for vals, axis, setter in ((xs, ax.xaxis, ax.set_xscale), (ys, ax.yaxis, ax.set_yscale)):
        if min(vals) > 0 and max(vals) / min(vals) >= 10:
            setter("log")
            axis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("multipliers planned")
    ax.set_ylabel("cycles per image")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    sec.plots.append(w.save(fig, f"{prefix}-plans", "cycles per image against multipliers"))
    sec.tables.append(Table("planned designs", [
        "board", "engine", "budget", "multipliers", "DSP planned", "cycles/image",
        "MAC efficiency", "plan (layer:lanes)"],
        [[k[0], k[1], k[2], r.get("multipliers"), r.get("dsp_planned"),
          r.get("cycles_per_image"), r.get("mac_efficiency"), r.get("plan")]
         for k, r in sorted(designs.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                              kv[1]["multipliers"]))]))
    return sec


def _explore_sections(w, src, prefix):
    rows = src.data
    sec = Section(f"{src.label}: explore rows", f"{prefix}-rows")
    ok = [r for r in rows if _row_ok(r)]
    sec.notes.append(f"{len(rows)} points, {len(ok)} ok, {len(rows) - len(ok)} refused or "
                     f"failed.")
    header = ["board", "engine", "budget", "seed", "status", "multipliers"] + \
             [f"{r} used/avail" for r in RESOURCES] + \
             ["Fmax MHz", "timing met", "cycles/image", "images/s", "MAC efficiency",
              "build s", "message"]
    trows = []
    for r in rows:
        trows.append([r.get("board"), r.get("engine"), r.get("budget"), r.get("seed"),
                      r.get("status") or "ok", r.get("multipliers")]
                     + ["/".join(_num(v) for v in _util(r, x)) if _util(r, x)[0] is not None
                        else None for x in RESOURCES]
                     + [r.get("fmax_mhz"), r.get("timing_met"), r.get("cycles_per_image"),
                        r.get("images_per_second"), r.get("mac_efficiency"),
                        r.get("build_seconds", r.get("wall_seconds")), r.get("message")])
    sec.tables.append(Table("every point", header, trows))
    out = [sec]
    pl = _plan_points_section(w, src, prefix, ok)
    if pl is not None:
        out.append(pl)
    pts = [((r.get("board"), r.get("engine") or "dataflow", r.get("budget")), r.get("seed"),
            r.get("fmax_mhz"), r.get("target_mhz")) for r in ok]
    pts = [(f"{b} {e} {m}", s, f, t) for (b, e, m), s, f, t in pts]
    fm = _fmax_section(w, f"{src.label}: Fmax over seeds", f"{prefix}-fmax", pts)
    if fm is not None:
        out.append(fm)
    else:
        sec.notes.append("no Fmax in these rows (files-only points): no Fmax plot")
    par = Section(f"{src.label}: images/s vs LUT and DSP, Pareto fronts", f"{prefix}-pareto")
    from .explore import pareto  # the front `shiftacc explore` prints: one definition
    fig, axes = w.plt.subplots(1, 2, figsize=(11, 4))
    drew = False
    for ax, res in zip(axes, ("LUT", "DSP")):
        cand = [(r, _util(r, res)[0], r.get("images_per_second")) for r in ok]
        cand = [(r, u, v) for r, u, v in cand if _is_num(u)
                and _is_num(v)]
        ax.set_xlabel(f"{res} used")
        ax.set_ylabel("images/s (at Fmax)")
        ax.grid(alpha=0.3)
        if not cand:
            ax.text(0.5, 0.5, f"no rows with {res} and images/s", ha="center",
                    transform=ax.transAxes)
            par.notes.append(f"no ok rows with both {res} used and images/s: no {res} front")
            continue
        drew = True
        boards = sorted({str(r.get("board")) for r, _, _ in cand})
        for b in boards:
            xs = [u for r, u, v in cand if str(r.get("board")) == b]
            ys = [v for r, u, v in cand if str(r.get("board")) == b]
            ax.scatter(xs, ys, s=18, alpha=0.7, label=b)
        front = [next(i for i, c in enumerate(cand) if c[0] is r)
                 for r in pareto([c[0] for c in cand], res)]
        fx = [cand[i][1] for i in front]
        fy = [cand[i][2] for i in front]
        ax.step(fx, fy, where="post", color="k", lw=1.2)
        ax.scatter(fx, fy, s=60, facecolors="none", edgecolors="k", label="Pareto front")
        ax.set_title(f"images/s vs {res}")
        ax.legend(fontsize=7)
        par.tables.append(Table(f"Pareto front, images/s vs {res}", [
            "board", "engine", "budget", "seed", f"{res} used", "images/s", "Fmax MHz",
            "cycles/image"],
            [[cand[i][0].get("board"), cand[i][0].get("engine"), cand[i][0].get("budget"),
              cand[i][0].get("seed"), cand[i][1], cand[i][2], cand[i][0].get("fmax_mhz"),
              cand[i][0].get("cycles_per_image")] for i in front]))
    if drew:
        par.plots.append(w.save(fig, f"{prefix}-pareto", "images per second against LUTs and "
                                                         "DSPs, with the Pareto fronts"))
    else:
        w.plt.close(fig)
    out.append(par)
    return out


def _runs_section(w, runs):
    sec = Section("simulations and runs", "runs")
    header = ["file", "kind", "images", "mismatches", "accuracy", "cycles/image measured",
              "predicted", "ideal", "MAC efficiency", "images/s (device clock)",
              "images/s (wall)", "simulator / engine"]
    rows, bars = [], []
    for s in runs:
        d = s.data
        rows.append([str(s.path), s.kind, d.get("images"), d.get("golden_mismatches"),
                     d.get("accuracy"), d.get("cycles_per_image"),
                     d.get("predicted_cycles_per_image"), d.get("ideal_cycles_per_image"),
                     d.get("mac_efficiency"), d.get("device_images_per_second"),
                     d.get("images_per_second"), d.get("simulator") or d.get("engine")])
        vals = [d.get(k) for k in ("cycles_per_image", "predicted_cycles_per_image",
                                   "ideal_cycles_per_image")]
        if any(_is_num(v) for v in vals):
            bars.append((s.label, vals))
    sec.tables.append(Table("results", header, rows))
    if bars:
        import numpy as np
        fig, ax = w.plt.subplots(figsize=(max(5, 2 * len(bars) + 2), 3.4))
        width = 0.27
        for k, lab in enumerate(("measured", "predicted", "ideal (MACs/multipliers)")):
            ax.bar(np.arange(len(bars)) + k * width,
                   [v[k] if _is_num(v[k]) else 0 for _, v in bars], width,
                   label=lab)
        ax.set_xticks(np.arange(len(bars)) + width, [b[0] for b in bars], fontsize=8)
        ax.set_ylabel("cycles per image")
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
        sec.plots.append(w.save(fig, "runs-cycles", "cycles per image: measured, predicted, "
                                                    "ideal"))
    bad = [s for s in runs if s.data.get("golden_mismatches")]
    sec.notes.append(f"{len(bad)} of {len(runs)} results differ from the golden model"
                     if bad else "every logit matched the golden model in these results")
    return sec


def _regress_section(w, src, prefix):
    """Mismatches and predicted against measured cycles of a random-network regression."""
    rows = src.data
    sec = Section(f"{src.label}: random-network regression", f"{prefix}-regress")
    bad = [r for r in rows if r.get("status") not in ("ok", None)]
    mism = sum(int(r.get("mismatches") or 0) + int(r.get("stalled_mismatches") or 0)
               for r in rows)
    sec.notes.append(f"{len(rows)} networks: {len(rows) - len(bad)} ok, {len(bad)} "
                     f"mismatched or failed; {mism} images differ from the golden model in "
                     f"all.")
    pts = [(r.get("predicted_cycles_per_image"), r.get("measured_cycles_per_image"),
            r.get("status")) for r in rows]
    pts = [p for p in pts if all(_is_num(v) for v in p[:2])]
    if pts:
        fig, ax = w.plt.subplots(figsize=(5, 4.2))
        for st, color in (("ok", "#4c72b0"), ("other", "#c44e52")):
            sel = [p for p in pts if (p[2] == "ok") == (st == "ok")]
            if sel:
                ax.scatter([p[0] for p in sel], [p[1] for p in sel], s=16, color=color,
                           label="ok" if st == "ok" else "mismatch / failed")
        lo = min(min(p[0], p[1]) for p in pts)
        hi = max(max(p[0], p[1]) for p in pts)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="measured = predicted")
        if lo > 0 and hi / lo >= 10:
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel("predicted cycles per image")
        ax.set_ylabel("measured cycles per image")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        sec.plots.append(w.save(fig, f"{prefix}-regress", "measured against predicted cycles "
                                                          "per image"))
    cols = ("seed", "status", "layers", "shape", "act_bits", "weight_bits", "budget",
            "multipliers", "images", "mismatches", "stalled_mismatches",
            "predicted_cycles_per_image", "measured_cycles_per_image",
            "ideal_cycles_per_image", "mac_efficiency", "wall_seconds", "replay", "message")
    sec.tables.append(Table("every network", [c.replace("_", " ") for c in cols],
                            [[r.get(c) for c in cols] for r in rows]))
    return sec


_CSS = """
body{font-family:sans-serif;margin:1.5em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:2em}
.row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
figure{margin:0}img{max-width:100%;border:1px solid #eee}
table{border-collapse:collapse;font-size:.8em;margin:.5em 0}caption{text-align:left;
font-weight:bold;padding:.3em 0}td,th{border:1px solid #ccc;padding:.15em .5em;
text-align:right}th{background:#f3f3f3}td:first-child,td:last-child{text-align:left}
.note{color:#555;font-style:italic}.tables{overflow-x:auto;max-width:100%}
"""


def _html(sections, inputs, title):
    toc = "".join(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>'
                  for s in sections)
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             "<p>inputs: " + ", ".join(f"<code>{html.escape(str(s.path))}</code> ({s.kind})"
                                      for s in inputs) + "</p>",
             f"<p>written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; the numbers of every table "
             f"are in <a href=\"report.json\">report.json</a>.</p><ul>{toc}</ul>"]
    for s in sections:
        parts.append(f'<h2 id="{s.anchor}">{html.escape(s.title)}</h2>')
        for n in s.notes:
            parts.append(f'<p class="note">{html.escape(n)}</p>')
        parts.append('<div class="row">')
        for fname, alt in s.plots:
            parts.append(f'<figure><img src="{html.escape(fname)}" alt="{html.escape(alt)}">'
                         f'</figure>')
        parts.append('<div class="tables">' + "".join(t.to_html() for t in s.tables)
                     + "</div></div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------
# The folder


def _check_out(out, force, inputs):
    """Refuse up front an output folder that must not be replaced."""
    out = Path(out)
    res = out.resolve()
    for s in inputs:
        p = Path(s.path).resolve()
        if p == res or res in p.parents:
            raise UsageError(f"--out {out} holds the input {s.path}; choose another folder")
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"--out {out} is a file, not a folder")
        entries = list(out.iterdir())
        if entries and not force:
            raise UsageError(f"--out {out} already exists; pass --force to replace it")
        if entries:
            try:
                marker = json.loads((out / "report.json").read_text()).get("generator")
            except (OSError, ValueError, AttributeError):
                marker = None
            if marker != REPORT_MARKER:
                raise UsageError(f"--out {out} is a folder that shiftacc report did not write "
                                 f"(no report.json of a report); refusing to replace it even "
                                 f"with --force: choose another folder")
    from .outputs import check_output_dir
    check_output_dir(out.parent if str(out.parent) else Path("."), what="--out")


def write_report(inputs, out, *, force=False, config=None, title=None, say=print):
    """Write the report folder of ``inputs`` (from :func:`load_input`) to ``out``.

    Parameters
    ----------
    inputs : list of Source
    out : str or Path
        The folder to write; replaced only with ``force`` and only if it is an earlier
        report (or empty).
    force : bool
    config : hw.plan.PlanConfig, optional
        Parallelism config of the artifacts' plans (default: the planner's).
    title : str, optional
    say : callable

    Returns
    -------
    dict
        What ``report.json`` holds: the sections, their plots and tables.

    Raises
    ------
    UsageError
        No input, or an output folder that may not be replaced.
    MissingExtra
        matplotlib is not installed.
    """
    if not inputs:
        raise UsageError("no input given")
    out = Path(out)
    _check_out(out, force, inputs)
    _mpl()  # a missing extra stops before any file is written
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    try:
        w = _Writer(tmp)
        counts = {}
        for s in inputs:
            counts[s.kind] = counts.get(s.kind, 0) + 1
            if not s.label:
                s.label = f"{s.data.name} ({s.path.name})" if s.kind == "model" else (
                    f"{s.path.parent.name}/{s.path.name}"
                    if s.path.name in ("build_report.json", "results.json") else s.path.name)
            s.config = config
        sections = []
        for k, s in enumerate(inputs):
            if s.kind == "model":
                sections.extend(_model_sections(w, s, f"m{k + 1}"))
            elif s.kind == "explore":
                sections.extend(_explore_sections(w, s, f"e{k + 1}"))
            elif s.kind == "regress":
                sections.append(_regress_section(w, s, f"r{k + 1}"))
        builds = [s for s in inputs if s.kind == "build"]
        if builds:
            sections.extend(_build_sections(w, builds))
        runs = [s for s in inputs if s.kind in ("sim", "run")]
        if runs:
            sections.append(_runs_section(w, runs))
        title = title or "shiftacc report: " + ", ".join(s.label for s in inputs)
        (tmp / "index.html").write_text(_html(sections, inputs, title), encoding="utf-8")
        doc = {"generator": REPORT_MARKER, "title": title,
               "inputs": [{"path": str(s.path), "kind": s.kind} for s in inputs],
               "sections": [{"title": s.title, "anchor": s.anchor, "notes": s.notes,
                             "plots": [p for p, _ in s.plots],
                             "tables": [t.to_dict() for t in s.tables]} for s in sections]}
        (tmp / "report.json").write_text(json.dumps(doc, indent=1, default=_jsonable))
        os.chmod(tmp, 0o777 & ~_umask())
        _replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    say(f"[report] wrote {out / 'index.html'}: {len(sections)} sections, "
        f"{sum(len(s.plots) for s in sections)} plots, "
        f"{sum(len(s.tables) for s in sections)} tables")
    return doc


def _jsonable(v):
    if hasattr(v, "item"):  # NumPy scalars
        return v.item()
    return str(v)


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def _replace_folder(tmp, out):
    """Move the finished ``tmp`` folder to ``out``; an old ``out`` is moved aside first and
    removed only after the new one is in place."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=tmp.parent))
        os.rmdir(old)
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None and not out.exists():
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
