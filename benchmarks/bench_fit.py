"""Device-aware planning: the fit decision for a model on FPGA boards and parts.

By default, per board (``--boards``, the ULX3S's and the iCEBreaker's five parts): the engine
``shiftacc build --board B`` chooses (``--engine auto``: ``sw.cli_build.choose_engine``, the
faster of the dataflow and overlay engines that fit the device, with the link engine), its
plan (dataflow: ``max_multipliers`` / multipliers; overlay: MAC lanes, requant units, feature-map
words), DSP and RAM blocks used of available, predicted cycles/image, images/s at the assumed
clock and, with ``--fmax BOARD=MHZ,...`` (place-and-route results), at the achieved Fmax, and
the one-line reason. ``--devices`` instead prints the dataflow engine alone per part, as
below.

For each part (``--devices``): the fastest plan whose DSP blocks, RAM blocks and estimated logic cells (the
link engine and UART included; ``hw/lut_model.py``) stay within 90% of the part's
(``--headroom``), or the refusal with what overflows. Printed per part: the chosen plan
(``max_multipliers``, multipliers), DSP and RAM blocks used of available (accelerator + link
engine), LUT-RAM cells, the logic-cell estimate of available (accelerator + link engine and
UART), predicted cycles/image and the images/s at an **assumed** clock (50 MHz iCE40,
100 MHz ECP5) until place-and-route figures exist. ``--no-lut`` leaves the logic unchecked
(the DSP/RAM-only decision, for comparison); ``--slots``/``--max-payload`` set the link
engine (default: 4 slots, as ``LinkTop``).

Usage::

    python benchmarks/bench_fit.py [--model digits.npz] [--boards icebreaker,ulx3s-12f,...]
                                   [--fmax icebreaker=31.50,...] [--json OUT.json]
    python benchmarks/bench_fit.py [--model digits.npz] --devices iCE40UP5K,LFE5U-12F,...
                                   [--headroom 0.1] [--no-lut] [--slots N]
                                   [--max-payload BYTES] [--json OUT.json]

Without ``--model`` it trains the default digits model first (``shiftacc train``, ~15 s).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DEVICES = "iCE40UP5K,LFE5U-12F,LFE5U-25F,LFE5U-45F,LFE5U-85F"
DEFAULT_BOARDS = "icebreaker,ulx3s-12f,ulx3s-25f,ulx3s-45f,ulx3s-85f"


def _parse_fmax(text):
    out = {}
    for item in filter(None, (text or "").split(",")):
        name, _, mhz = item.partition("=")
        out[name.strip()] = float(mhz)
    return out


def board_decisions(model, boards, fmax=None):
    """Per board: the engine ``build --engine auto`` chooses and its figures (a dict)."""
    from shiftacc.boards.registry import find_board
    from shiftacc.hw.devices import get_device
    from shiftacc.sw.cli_build import _device_of, choose_engine, overlay_usage
    from shiftacc.hw.devices import device_usage
    from shiftacc.sw.errors import UsageError
    rows = []
    for name in boards:
        board = find_board(name)
        row = {"board": board.name, "device": board.device}
        t0 = time.perf_counter()
        try:
            choice = choose_engine(model, board)
        except UsageError as e:
            row.update(engine=None, error=str(e))
            rows.append(row)
            continue
        plan, device = choice.plan, _device_of(board)
        cand = choice.candidates[choice.engine]
        if choice.engine == "overlay":
            c = plan.config
            row["plan"] = f"{c.lanes} lanes, R={c.requant_units}, fm {c.fm_words}"
            use = overlay_usage(model, plan, board, device)
        else:
            row["plan"] = (f"max_mult {cand.get('max_multipliers')}, "
                           f"{plan.multipliers} mults")
            use = device_usage(model, plan, device, link_kw=board.link_kw(model))
        cycles = plan.predicted_cycles_per_image
        clock = get_device(board.device).clock_mhz
        row.update(engine=choice.engine, reason=choice.reason, multipliers=plan.multipliers,
                   dsp={"used": use["dsp"]["used"], "available": use["dsp"]["available"],
                        "cell": use["dsp"]["cell"]},
                   ram_blocks={"used": use["ram_blocks"]["used"],
                               "available": use["ram_blocks"]["available"],
                               "cell": use["ram_blocks"]["cell"]},
                   cycles_per_image=cycles, clock_mhz_assumed=clock,
                   images_per_second_assumed=clock * 1e6 / cycles,
                   candidates=choice.candidates,
                   search_seconds=round(time.perf_counter() - t0, 2))
        if fmax and board.name in fmax:
            row["fmax_mhz"] = fmax[board.name]
            row["images_per_second_at_fmax"] = fmax[board.name] * 1e6 / cycles
        rows.append(row)
    return rows


def board_table_text(rows):
    """The rows of :func:`board_decisions` as a text table, then each reason."""
    head = (f"{'board':<11}{'device':<11}{'engine':<9}{'plan':<26}{'DSP used/avail':>15}"
            f"{'RAM used/avail':>15}{'cycles/img':>11}{'MHz*':>6}{'img/s*':>8}"
            f"{'Fmax':>8}{'img/s@Fmax':>11}")
    lines = [head]
    for r in rows:
        if r.get("engine") is None:
            lines.append(f"{r['board']:<11}{r['device']:<11}refused: {r['error']}")
            continue
        fm = f"{r['fmax_mhz']:.2f}" if r.get("fmax_mhz") else "-"
        ips = f"{r['images_per_second_at_fmax']:.0f}" if r.get("fmax_mhz") else "-"
        lines.append(f"{r['board']:<11}{r['device']:<11}{r['engine']:<9}{r['plan']:<26}"
                     f"{r['dsp']['used']:>8}/{r['dsp']['available']:<6}"
                     f"{r['ram_blocks']['used']:>8}/{r['ram_blocks']['available']:<6}"
                     f"{r['cycles_per_image']:>11}{r['clock_mhz_assumed']:>6g}"
                     f"{r['images_per_second_assumed']:>8.0f}{fm:>8}{ips:>11}")
    lines.append("* assumed clock (50 MHz iCE40, 100 MHz ECP5); Fmax: as given with --fmax "
                 "(place and route); DSP: SB_MAC16 / MULT18X18D, RAM: SB_RAM40_4K / DP16KD, "
                 "accelerator + link engine")
    for r in rows:
        if r.get("reason"):
            lines.append(f"  {r['board']}: {r['reason']}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--boards", default=DEFAULT_BOARDS,
                    help="boards: the engine 'build --board' chooses on each (default)")
    ap.add_argument("--fmax", help="BOARD=MHZ,...: achieved Fmax, for images/s at Fmax")
    ap.add_argument("--devices", help="parts: the dataflow engine alone on each (instead of "
                    f"--boards; e.g. {DEFAULT_DEVICES})")
    ap.add_argument("--headroom", type=float, default=0.1)
    ap.add_argument("--no-lut", action="store_true", help="check DSP and RAM blocks only")
    ap.add_argument("--slots", type=int, help="link engine receive slots (default 4)")
    ap.add_argument("--max-payload", type=int, help="link engine largest payload (bytes)")
    ap.add_argument("--json", help="write the reports here")
    args = ap.parse_args()

    from shiftacc.hw.devices import fit_report_text, plan_for_device
    from shiftacc.hw.plan import PlanError
    from shiftacc.models.artifact import load_artifact

    model_path = args.model
    if model_path is None:
        model_path = Path(tempfile.mkdtemp(prefix="bench-fit-")) / "digits.npz"
        subprocess.run([sys.executable, "-m", "shiftacc", "train", "--dataset", "digits",
                        "--out", str(model_path), "-q"], check=True)
    model = load_artifact(model_path)
    print(f"model {model.name}: input {'x'.join(map(str, model.input_shape))}, "
          f"{len(model.layers)} layers, {model.macs_per_image()} MACs/image; headroom "
          f"{args.headroom:.0%}")
    if args.devices is None:
        rows = board_decisions(model, args.boards.split(","), _parse_fmax(args.fmax))
        print(board_table_text(rows))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
        return
    link_kw = {k: v for k, v in (("slots", args.slots), ("max_payload", args.max_payload))
               if v is not None}
    reports = []
    for name in args.devices.split(","):
        t0 = time.perf_counter()
        try:
            plan, rep = plan_for_device(model, name, headroom=args.headroom,
                                        lut=not args.no_lut, link_kw=link_kw)
            rep = {k: v for k, v in rep.items() if k != "config"}
        except PlanError as e:
            rep = {"device": name, "error": str(e)}
        rep["search_seconds"] = round(time.perf_counter() - t0, 2)
        reports.append(rep)
    print(fit_report_text(reports))
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=1))


if __name__ == "__main__":
    main()
