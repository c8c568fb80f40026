"""Fuzz the host link through ``shiftacc serve`` (issue #8) and print the figures.

Starts ``shiftacc serve`` (Verilator; the real UART PHY on both ends with ``--uart``) on a
free port, runs :func:`shiftacc.sim.linkfuzz.fuzz_link` against it (corrupted, truncated,
duplicated, reordered, random frames in bursts between valid requests, every logit checked
against the golden model), stops the server and prints the figures table. Exit status 1 when
a wrong result was accepted, a valid request hung or went unanswered.

    python benchmarks/fuzz_link_serve.py --frames 10000 --seed 1
    python benchmarks/fuzz_link_serve.py --frames 3000 --seed 1 --uart
    python benchmarks/fuzz_link_serve.py --model digits.npz --frames 10000

Without ``--model`` the network is a random tiny one (the same as the tests' serve fuzz).
Builds are cached (``SHIFTACC_CACHE``, default the user cache).
"""

import argparse
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from shiftacc.models.artifact import load_artifact, save_artifact
from shiftacc.models.netgen import random_model
from shiftacc.sim.linkfuzz import fuzz_link

START_DEADLINE = 1800   # seconds for serve to build and listen


def start_server(model_path, extra, log_path):
    log = open(log_path, "w")
    cmd = [sys.executable, "-m", "shiftacc", "serve", str(model_path), "--port", "0", "-q",
           *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                            start_new_session=True)
    box = {}
    t = threading.Thread(target=lambda: box.update(line=proc.stdout.readline()), daemon=True)
    t.start()
    t.join(START_DEADLINE)
    m = re.search(r"socket://[0-9.]+:\d+", box.get("line", ""))
    if not m:
        stop_server(proc)
        raise SystemExit(f"serve did not announce its socket within {START_DEADLINE} s; see "
                         f"{log_path}:\n{Path(log_path).read_text()[-3000:]}")
    return proc, m.group(0)


def stop_server(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=10000, help="noise frames (at least)")
    ap.add_argument("--seed", type=int, help="seed (default: drawn and printed)")
    ap.add_argument("--model", help="artifact (default: a random tiny network)")
    ap.add_argument("--uart", action="store_true",
                    help="the real UART PHY on both ends of the simulated line")
    ap.add_argument("--baud", type=int, default=3_000_000, help="line rate with --uart")
    ap.add_argument("--clock-hz", type=int, default=12_000_000, help="simulated clock")
    ap.add_argument("--deadline", type=float, default=30.0,
                    help="seconds within which each valid request must be answered")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--workdir", help="keep the server log here (default: a temporary folder)")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fuzz-link-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.model:
        model_path = Path(args.model)
    else:
        rng = np.random.default_rng(20261122)
        model_path = work / "tiny.npz"
        save_artifact(model_path, random_model(rng, size=(5, 4), blocks=1, max_width=5))
    model = load_artifact(model_path)
    extra = ["--uart", "--baud", str(args.baud), "--clock-hz", str(args.clock_hz)] \
        if args.uart else []
    print(f"seed {seed}; model {model_path}; {'UART' if args.uart else 'byte stream'}; "
          f"starting shiftacc serve ...", flush=True)
    t0 = time.perf_counter()
    proc, url = start_server(model_path, extra, work / "serve.log")
    print(f"serving on {url} after {time.perf_counter() - t0:.1f} s", flush=True)
    try:
        rep = fuzz_link(url, model, args.frames, seed, deadline=args.deadline,
                        log=lambda m: print(m, flush=True))
    finally:
        status = stop_server(proc)
    print(rep.table())
    print(f"server stopped (exit {status})")
    if args.json:
        Path(args.json).write_text(json.dumps({**rep.as_dict(), "uart": args.uart,
                                               "model": str(model_path)}, indent=1))
    return 0 if rep.ok and status == 143 else 1


if __name__ == "__main__":
    sys.exit(main())
