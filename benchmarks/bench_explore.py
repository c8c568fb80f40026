"""Wall time of an exploration on Ray against the same points run one after another.

Both runs build the same points from scratch (each into its own folder, so the second reuses
nothing of the first): first serially in this process (``executor="serial"``, what a loop
over ``shiftacc build`` does), then as Ray tasks on an embedded Ray of this machine's CPUs
(or ``--address``). Prints both wall times, their ratio, the rows and the Pareto fronts, and
writes ``OUT/bench.json``.

Usage::

    python benchmarks/bench_explore.py MODEL.npz --boards icebreaker,ulx3s-12f \
        --budgets 8,16 --seeds 3 --out OUT [--no-bitstream] [--address HOST:PORT]
        [--skip-serial]

Ray's start-up (~5-30 s, more on a loaded machine) is inside the Ray wall time.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from shiftacc.boards.registry import find_board
from shiftacc.sw import explore as ex
from shiftacc.sw.cli_explore import _ROW_COLS, _table, explore, parse_list, pareto_text


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--boards", default="icebreaker,ulx3s-12f")
    ap.add_argument("--budgets", default="8,16")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--freq", type=float)
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-bitstream", action="store_true")
    ap.add_argument("--address")
    ap.add_argument("--skip-serial", action="store_true",
                    help="only the Ray run (e.g. the cluster check)")
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args()
    boards = [find_board(b).name for b in parse_list(args.boards, "--boards")]
    if args.no_bitstream:
        args.seeds = 1  # nextpnr does not run: seeds make no difference
    points = ex.expand_points(boards, ["dataflow"], parse_list(args.budgets, "--budgets", int),
                              range(1, args.seeds + 1), args.freq)
    out = Path(args.out)
    say = lambda *a, **k: print(*a, **k, file=sys.stderr, flush=True)  # noqa: E731
    result = {"points": len(points), "model": args.model, "argv": sys.argv[1:]}
    runs = ([] if args.skip_serial else ["serial"]) + ["ray"]
    rows = None
    for executor in runs:
        t0 = time.monotonic()
        rows, reused, info = explore(args.model, out / executor, points,
                                     bitstream=not args.no_bitstream, executor=executor,
                                     address=args.address, timeout=args.timeout, say=say)
        wall = time.monotonic() - t0
        result[executor] = {"wall_seconds": round(wall, 1), "reused": reused,
                            "cpus": info["cpus"],
                            "ok": sum(r["status"] == "ok" for r in rows),
                            "refused": sum(r["status"] == "refused" for r in rows),
                            "failed": sum(r["status"] == "failed" for r in rows),
                            "hosts": sorted({r.get("host") or "?" for r in rows})}
        say(f"[bench] {executor}: {wall:.1f} s for {len(points)} points ({reused} reused)")
        result[f"{executor}_rows"] = rows
    if "serial" in result:
        result["speedup"] = round(result["serial"]["wall_seconds"]
                                  / result["ray"]["wall_seconds"], 2)
        # Same results either way: every deterministic figure of every point must agree.
        same = ("status", "multipliers", "LUT_used", "FF_used", "DSP_used", "RAM_used",
                "fmax_mhz", "cycles_per_image")
        diffs = [(a["key"], k) for a, b in zip(result["serial_rows"], result["ray_rows"])
                 for k in same if a.get(k) != b.get(k)]
        result["serial_vs_ray_differences"] = diffs
    print(_table(rows, _ROW_COLS))
    print(pareto_text(rows), end="")
    print()
    for executor in runs:
        r = result[executor]
        print(f"{executor}: {r['wall_seconds']} s, {r['ok']} ok / {r['refused']} refused / "
              f"{r['failed']} failed, {r['cpus']} CPUs, hosts {', '.join(r['hosts'])}")
    if "speedup" in result:
        print(f"serial / ray wall time: {result['speedup']}x; rows differing: "
              f"{len(result['serial_vs_ray_differences'])}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
