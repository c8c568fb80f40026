"""Host-link figures: ``shiftacc serve`` + ``shiftacc run`` on the digits test split.

For each link (byte streams, and the real UART PHY at the given baud) it starts a served
simulation, runs the whole test split through the driver and prints: mismatches against the
golden model, link efficiency (image payload bytes over what the line carries in the device
time the batch took), images/s in device time (what a board at that clock and baud does),
the parameter load time in device time, and the wall-clock images/s of the simulation.

Usage::

    python benchmarks/bench_link.py [--model digits.npz] [--baud 3000000] [--clock-hz 12000000]
                                    [--limit N] [--simulator verilator]

Without ``--model`` it trains the default digits model first (``shiftacc train``, ~15 s).
"""

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _serve(model, extra):
    proc = subprocess.Popen([sys.executable, "-m", "shiftacc", "serve", str(model), "--port",
                             "0", "-q", *extra], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("line", proc.stdout.readline()),
                         daemon=True)
    t.start()
    t.join(1800)
    m = re.search(r"socket://[0-9.]+:\d+", box.get("line", ""))
    if not m:
        proc.kill()
        raise SystemExit(f"serve did not start: {box.get('line')!r}")
    return proc, m.group(0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--baud", type=int, default=3_000_000)
    ap.add_argument("--clock-hz", type=int, default=12_000_000)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--simulator", default="verilator")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-link-"))
    model = args.model
    if model is None:
        model = tmp / "digits.npz"
        subprocess.run([sys.executable, "-m", "shiftacc", "train", "--dataset", "digits",
                        "--out", str(model), "-q"], check=True)
    rows = []
    for label, extra in (("byte stream", []),
                         (f"UART {args.baud / 1e6:g} Mbaud",
                          ["--uart", "--baud", str(args.baud), "--clock-hz",
                           str(args.clock_hz)])):
        proc, url = _serve(model, ["--simulator", args.simulator, "--clock-hz",
                                   str(args.clock_hz), *extra])
        try:
            out = tmp / f"run-{len(rows)}.json"
            cmd = [sys.executable, "-m", "shiftacc", "run", str(model), "--port", url,
                   "--dataset", "digits", "--json", str(out), "-q", "--timeout", "30"]
            if args.limit:
                cmd += ["--limit", str(args.limit)]
            t0 = time.perf_counter()
            status = subprocess.run(cmd).returncode
            wall = time.perf_counter() - t0
            res = json.loads(out.read_text())
            rows.append((label, res, wall, status))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    print(f"\nmodel {model}, clock {args.clock_hz / 1e6:g} MHz, {args.simulator}")
    print(f"{'link':<16}{'images':>7}{'mismatch':>9}{'efficiency':>11}{'dev img/s':>11}"
          f"{'params ms':>10}{'sim img/s':>10}{'wall s':>8}{'retries':>8}")
    for label, res, wall, status in rows:
        eff = res.get("link_efficiency")
        print(f"{label:<16}{res['images']:>7}{res['golden_mismatches']:>9}"
              f"{(f'{eff:.3f}' if eff is not None else '-'):>11}"
              f"{res['device_images_per_second']:>11.0f}"
              f"{res['param_load_device_seconds'] * 1e3:>10.1f}"
              f"{res['images_per_second']:>10.1f}{wall:>8.1f}{res['retries']:>8}")
    if any(status for *_, status in rows):
        raise SystemExit("a run failed (see above)")


if __name__ == "__main__":
    main()
