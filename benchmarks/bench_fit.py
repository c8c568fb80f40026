"""Device-aware planning: the fit decision for a model on FPGA parts (hw/devices.py).

For each part: the fastest plan whose DSP blocks, RAM blocks and estimated logic cells (the
link engine and UART included; ``hw/lut_model.py``) stay within 90% of the part's
(``--headroom``), or the refusal with what overflows. Printed per part: the chosen plan
(``max_multipliers``, multipliers), DSP and RAM blocks used of available (accelerator + link
engine), LUT-RAM cells, the logic-cell estimate of available (accelerator + link engine and
UART), predicted cycles/image and the images/s at an **assumed** clock (50 MHz iCE40,
100 MHz ECP5) until place-and-route figures exist. ``--no-lut`` leaves the logic unchecked
(the DSP/RAM-only decision, for comparison); ``--slots``/``--max-payload`` set the link
engine (default: 4 slots, as ``LinkTop``).

Usage::

    python benchmarks/bench_fit.py [--model digits.npz] [--devices iCE40UP5K,LFE5U-12F,...]
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--devices", default=DEFAULT_DEVICES)
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
