"""The ``shiftacc`` command line: one entry point, one subcommand per job.

The parser is built here from names in :mod:`shiftacc.sw.choices` only, so ``shiftacc
--help`` (and every subcommand's ``--help``) imports neither torch nor NumPy nor Amaranth;
the module that implements a subcommand is imported when that subcommand runs
(``sw.cli_model`` for train/golden/info, ``sw.cli_hw`` for generate/sim/cache,
``sw.cli_link`` for serve/run).

Errors: subcommands raise the exceptions of :mod:`shiftacc.sw.errors` (or let a typed
library error through: ``ArtifactError``, ``PlanError``) and :func:`main` maps them, in one
place, to a one-line message and an exit status:

0 success; 1 hardware differs from golden or stalled; 2 bad input or usage; 3 a tool or an
optional extra is missing; 4 a simulator build failed; 5 the link failed (the device could
not be reached, stopped answering or refused a frame); 70 internal error (traceback written
to a log file); 130 interrupted; 143 terminated.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import time
import traceback

from .. import __version__
from .choices import DATASETS, DEVICES, METHODS, PRESETS, SIMULATORS, add_engine_args
from .errors import (EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_MISSING, EXIT_TERMINATED,
                     EXIT_USAGE, ShiftaccError)

__all__ = ["main", "build_parser", "add_image_args", "add_json_output", "positive_int",
           "REPORT_TO", "FORCE_HELP"]

#: Help of every ``--force`` that lets a command replace an existing output file.
FORCE_HELP = "replace an existing output file (an input is never overwritten) (default: refuse)"
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a killed writer
#: Where internal errors should be reported (the message names the crash log too).
REPORT_TO = "the shiftacc maintainers (the project's issue tracker)"


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default, except where the help text already says it.

    Flags (default off) and options whose default is "not given" (None) carry their own
    words in the help text instead of a bare "(default: None)".
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or not action.option_strings:
            return text
        if action.default is None or action.default is False or \
                action.default is argparse.SUPPRESS:
            return text
        return text + " (default: %(default)s)"


def positive_int(text):
    """argparse type: an integer >= 1 (``--limit``, ``--batch``, ``--threads``...)."""
    return _int_at_least(1)(text)


def seed_list(text):
    """argparse type: nextpnr seeds as ``N``, ``N,M,...`` or ``A-B`` -> a tuple of distinct ints."""
    seeds = []
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            if sep and lo:
                a, b = int(lo), int(hi)
                if b < a:
                    raise argparse.ArgumentTypeError(f"{part!r}: the range ends below its start")
                seeds.extend(range(a, b + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not a seed: give N, N,M,... or A-B (integers >= 0)") from None
    if any(v < 0 for v in seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: seeds are integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r} names a seed twice")
    if len(seeds) > 64:
        raise argparse.ArgumentTypeError(f"{text!r} is {len(seeds)} seeds; at most 64")
    return tuple(seeds)


def _int_at_least(low, high=None):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < low or (high is not None and v > high):
            rng = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"{v} is out of range: must be {rng}")
        return v
    parse.__name__ = "integer"
    return parse


def _common_options(top):
    """Options every subcommand accepts before or after its name (``-q``, ``-v``, ...)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output options")
    # The subcommands' copies default to SUPPRESS so that `shiftacc -q sim ...` is not
    # undone by the subparser's own default.
    kw = {} if top else {"default": argparse.SUPPRESS}
    g.add_argument("-q", "--quiet", action="store_true",
                   help="print only results and errors: no progress bars or build messages "
                        "(default: off)", **kw)
    g.add_argument("-v", "--verbose", action="count",
                   help="more detail: the traceback of a reported error (default: off)", **({"default": 0} if top else kw))
    g.add_argument("--progress", action="store_true",
                   help="show progress bars even when stderr is not a terminal (default: only "
                        "on a terminal)", **kw)
    return p


def add_image_args(parser):
    """Add the image-source options of ``golden`` and ``sim``.

    ``--dataset`` / ``--images`` (mutually exclusive, one is required at run time),
    ``--data-dir`` and ``--limit``; :func:`shiftacc.sw.cli_model.images_from_args` reads them.
    """
    g = parser.add_argument_group("images (give --dataset or --images)")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--dataset", choices=DATASETS,
                   help="use this data set's test split; labels are known, so accuracy is "
                        "reported ('digits' needs scikit-learn, the others --data-dir) "
                        "(default: none)")
    x.add_argument("--images", metavar="IMAGES.npy",
                   help="uint8 array [N, H, W, C] (or [N, H, W] for one channel) "
                        "(default: none)")
    g.add_argument("--data-dir", metavar="DIR",
                   help="folder with MNIST/FashionMNIST/CIFAR-10 in torchvision's layout "
                        "(default: none; not needed for digits)")
    g.add_argument("--limit", type=positive_int, metavar="N",
                   help="only the first N images (default: all)")


def add_json_output(parser, what="write results as JSON into an existing folder",
                    default="no file"):
    """Add ``--json OUT.json`` and ``--force`` (replace an existing output), worded alike in
    every subcommand that writes a JSON result."""
    parser.add_argument("--json", metavar="OUT.json",
                        help=f"{what}; an existing file is replaced only with --force "
                             f"(default: {default})")
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)


def build_parser():
    """The argument parser with every subcommand registered (imports nothing heavy)."""
    parser = argparse.ArgumentParser(
        prog="shiftacc", formatter_class=_Formatter, parents=[_common_options(True)],
        description="Shift networks to bit-exact FPGA accelerators.",
        epilog="exit status: 0 ok, 1 hardware differs from golden (or stalled), 2 bad input "
               "or usage, 3 missing tool or extra, 4 build failed, 5 link failure (device "
               "unreachable, not answering, refusing frames), 70 internal error, 130 interrupted")
    parser.add_argument("--version", action="version", version=f"shiftacc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    common = [_common_options(False)]

    def add(name, handler, **kw):
        p = sub.add_parser(name, formatter_class=_Formatter, parents=common, **kw)
        p.set_defaults(handler=handler)
        return p


    p = add("train", "cli_model:cmd_train", help="train a shift network and export its artifact",
            description="Train (shift search, fine-tune, QAT), export and evaluate a shift "
                        "network. Needs the 'train' extra: pip install 'shiftacc[train]'.")
    p.add_argument("--dataset", choices=DATASETS, default="digits", help="data set")
    p.add_argument("--method", choices=METHODS, default="sal", help="shift selection method")
    p.add_argument("--out", metavar="MODEL.npz",
                   help="artifact to write, missing folders created (default: "
                        "DATASET-shiftnet.npz); an existing file is replaced only with --force")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.add_argument("--epochs", type=_int_at_least(4),
                   help="training epochs, at least 4: search, fine-tune, QAT (default: the "
                        "data set's recipe: digits 60, mnist and fashion-mnist 8, cifar10 30)")
    p.add_argument("--preset", choices=PRESETS,
                   help="network preset (default: the data set's small one)")
    p.add_argument("--act-bits", type=int, choices=(4, 8), default=8, help="activation bits")
    p.add_argument("--weight-bits", type=int, choices=range(2, 9), default=8, metavar="{2..8}",
                   help="weight bits")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--data-dir", metavar="DIR",
                   help="folder with MNIST/FashionMNIST/CIFAR-10 in torchvision's layout "
                        "(default: none; not needed for digits)")
    # Training runs its float math on one thread whatever this says (models/train.py), so the
    # artifact is the same for any value; more threads only slow the tiny networks down.
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch CPU threads for the integer evaluation after training; training "
                        "itself always uses one, so the artifact does not depend on this")
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="where the float network trains: auto = cuda when torch sees a CUDA "
                        "device, else cpu; the artifact's format is the same either way and "
                        "its provenance records the device")
    from .cli_model import add_attention_args  # standard library only at import time
    add_attention_args(p)

    p = add("golden", "cli_model:cmd_golden", help="run the NumPy golden model on images",
            description="Run the exact integer golden model.")
    p.add_argument("model", metavar="MODEL.npz", help="artifact")
    add_image_args(p)
    add_json_output(p, "write logits (and accuracy) as JSON into an existing folder")

    p = add("info", "cli_model:cmd_info", help="describe an artifact",
            description="Layers, shapes, parameters, MACs, shift histogram.")
    p.add_argument("model", metavar="MODEL.npz", help="artifact")

    p = add("generate", "cli_hw:cmd_generate", help="emit the Verilog accelerator and its summary",
            description="Plan the accelerator for an artifact (the dataflow engine for its "
                        "topology, or with --engine overlay the program-driven overlay engine) "
                        "and write shiftacc_top.v, summary.json, summary.txt and params.bin "
                        "into a folder. "
                        "Files of an earlier 'generate' of the same artifact path are "
                        "refreshed; files of another artifact (or not written by generate) "
                        "are replaced only with --force. Other files are never touched.")
    p.add_argument("model", metavar="MODEL.npz", help="artifact")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder, created if missing (required)")
    p.add_argument("--config", metavar="PAR.json",
                   help="parallelism config JSON: max_multipliers, radius, layers, ... "
                        "(default: the planner's defaults)")
    p.add_argument("--force", action="store_true",
                   help="replace another artifact's generated files in DIR (default: refuse)")
    add_engine_args(p)

    p = add("sim", "cli_hw:cmd_sim", help="run the accelerator in cocotb and compare with golden",
            description="Simulate the generated accelerator on images in cocotb (Verilator "
                        "or Icarus) and compare every logit with the golden model. Exit status "
                        "1 when any logit differs or the design stalls.")
    p.add_argument("model", metavar="MODEL.npz", help="artifact")
    add_image_args(p)
    p.add_argument("--simulator", choices=SIMULATORS, default="verilator", help="simulator")
    p.add_argument("--config", metavar="PAR.json",
                   help="parallelism config JSON (default: the planner's defaults)")
    add_json_output(p)
    p.add_argument("--waves", action="store_true",
                   help="record a waveform (FST from Verilator, VCD from Icarus) and keep the "
                        "run folder (default: off; a mismatch records the failing image's)")
    p.add_argument("--protocol", action="store_true",
                   help="drive every stream from Python cycle by cycle with random stalls "
                        "(slow) (default: the fast bulk path)")
    p.add_argument("--stall-level", type=_int_at_least(0, 255), default=0, metavar="0..255",
                   help="bulk path: idle/backpressure probability x/256; 0 measures "
                        "steady-state cycles/image")
    p.add_argument("--batch", type=_int_at_least(1, 4096), default=64, metavar="N",
                   help="images per bulk command; one simulator build serves every N up to "
                        "64 (larger N sizes a bigger build)")
    p.add_argument("--seed", type=int, help="random seed (default: drawn and printed)")
    p.add_argument("--workdir", metavar="DIR",
                   help="keep the job, logs and waveforms in DIR (default: a temporary folder, "
                        "removed after a passing run)")
    add_engine_args(p)

    p.add_argument("--board", metavar="NAME",
                   help="with --engine overlay: the overlay config and link engine 'shiftacc "
                        "build --board NAME --engine overlay' places (icebreaker: the UP5K "
                        "config, SB_MAC16/SB_SPRAM256KA on Yosys's cell models) (default: "
                        "none, the --overlay-config/--lanes/--requant-units config)")

    p = add("serve", "cli_link:cmd_serve",
            help="simulate the board (link engine + accelerator) on a TCP socket",
            description="Simulate the board top (link engine + accelerator, and the real UART "
                        "PHY with --uart) in Verilator or Icarus and serve its byte stream on "
                        "a TCP socket: the driver reaches it as socket://HOST:PORT exactly as it "
                        "reaches a board's serial port. Serves client after client until "
                        "Ctrl-C.")
    p.add_argument("model", metavar="MODEL.npz",
                   help="artifact whose topology the simulated board is built for")
    p.add_argument("--port", type=_int_at_least(0, 65535), default=8765,
                   help="TCP port (0: any free port, printed)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0 for every interface)")
    p.add_argument("--simulator", choices=SIMULATORS, default="verilator", help="simulator")
    p.add_argument("--config", metavar="PAR.json",
                   help="parallelism config JSON (default: the planner's defaults)")
    p.add_argument("--uart", action="store_true",
                   help="simulate the UART PHY on the line at --baud (default: byte streams, "
                        "no UART)")
    p.add_argument("--baud", type=_int_at_least(1200),
                   help="line rate with --uart (default: --board's, else 3000000)")
    p.add_argument("--clock-hz", type=_int_at_least(1_000_000),
                   help="clock the simulated board reports and its UART divides (at least "
                        "4 clocks per bit) (default: --board's PLL clock, else 12000000)")
    p.add_argument("--max-clients", type=positive_int, metavar="N",
                   help="stop after N client sessions (default: serve until Ctrl-C)")
    add_engine_args(p)

    p.add_argument("--board", metavar="NAME",
                   help="serve the plan 'shiftacc build --board NAME' places (its engine's "
                        "config: with --engine overlay on the icebreaker the UP5K config on "
                        "Yosys's SB_MAC16/SB_SPRAM256KA models) and the board's link engine "
                        "(default: none)")

    p = add("run", "cli_link:cmd_run",
            help="load a model into a board (or a served simulation) and check every logit",
            description="Open the device at --port (a serial port such as /dev/ttyUSB1, or "
                        "socket://HOST:PORT of 'shiftacc serve'), check that its design matches "
                        "the model, load the parameters, stream the images and compare every "
                        "logit with the golden model. Exit status 1 when any logit differs.")
    p.add_argument("model", metavar="MODEL.npz", help="artifact")
    p.add_argument("--port", required=True, metavar="URL",
                   help="pyserial URL: /dev/ttyUSB1, socket://127.0.0.1:8765, ... (required)")
    add_image_args(p)
    p.add_argument("--baud", type=_int_at_least(1200), default=3_000_000,
                   help="serial line rate (ignored for socket://)")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="seconds of silence tolerated while waiting for any reply")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="keep trying to open --port for up to this long (a 'shiftacc serve' "
                        "still building, a board re-enumerating on USB)")
    p.add_argument("--retries", type=_int_at_least(0, 100), default=3,
                   help="times a frame is sent again after a timeout or a line error")
    add_json_output(p)

    p = add("boards", "cli_build:cmd_boards", help="list the supported FPGA boards",
            description="The boards 'shiftacc build' knows: device, family, clock, UART, and "
                        "whether a bitstream is built here (iCE40, ECP5: Yosys + nextpnr) or "
                        "only the files for the vendor's tools (Xilinx, Intel, Gowin).")
    p.add_argument("--json", action="store_true",
                   help="print the table as JSON (default: a text table)")

    p = add("build", "cli_build:cmd_build",
            help="build the design for an FPGA board: Verilog, constraints, bitstream, report",
            description="Plan the design for a board's device, wrap it in the board top "
                        "(oscillator, computed PLL, reset synchroniser, UART, LEDs) and build "
                        "it through amaranth-boards: iCE40 and ECP5 boards get a bitstream "
                        "(Yosys + nextpnr; native tools on PATH first, else yowasp-* from "
                        "PyPI) and a report (LUT/FF/RAM/DSP, Fmax, images/s) in "
                        "DIR/build_report.json; other boards get the Verilog, constraints and "
                        "vendor build script. Exit 2 for a design that cannot fit the device, "
                        "3 for a missing tool, 4 for a failed build.")
    p.add_argument("model", metavar="MODEL.npz", help="artifact")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--board", metavar="NAME",
                   help="board name from 'shiftacc boards' (default: none; give --board or "
                        "--platform)")
    g.add_argument("--platform", metavar="MODULE:CLASS",
                   help="any Amaranth platform class instead of --board, e.g. "
                        "amaranth_boards.icestick:ICEStickPlatform (clock: its oscillator; "
                        "UART: its 'uart' resource) (default: none)")
    p.add_argument("--out", metavar="DIR",
                   help="build folder, created if missing; files of an earlier build there are "
                        "replaced (default: build-BOARD)")
    p.add_argument("--config", metavar="PAR.json",
                   help="parallelism config JSON (default: the device-aware planner when "
                        "available, else the planner's defaults)")
    p.add_argument("--freq", type=float, metavar="MHZ",
                   help="target (accelerator) clock in MHz, made by a PLL from the oscillator "
                        "(default: the board's, see 'shiftacc boards')")
    p.add_argument("--link-clock-ratio", type=int, choices=(1, 2), default=None,
                   help="1: the UART and link engine on the accelerator's clock; 2 (iCE40 "
                        "with a PLL): on a clock of half of it, with clock-domain crossings "
                        "(default: the board's: 2 on the iCEBreaker, else 1)")
    p.add_argument("--baud", type=_int_at_least(1200),
                   help="UART line rate (default: the board's, see 'shiftacc boards')")
    p.add_argument("--seed", type=seed_list, default=(1,), metavar="SEED[,SEED...]",
                   help="nextpnr placement seed; several (1,2,3 or 1-3): synthesise once, place "
                        "and route with each, keep the fastest that places, report every seed's "
                        "Fmax (default: 1)")
    p.add_argument("--nextpnr-opt", action="append", metavar="'ARGS'",
                   help="extra nextpnr arguments appended to the build's (repeatable; one "
                        "string is split like a shell line; write it with '=' when it starts "
                        "with '-'), e.g. --nextpnr-opt=--tmg-ripup or "
                        "--nextpnr-opt='--placer-heap-timingweight 30' (default: none)")
    p.add_argument("--no-bitstream", action="store_true",
                   help="write the Verilog/RTLIL, constraints and build script only, run no "
                        "tool (always so for boards without an open flow) (default: build the "
                        "bitstream where the open tools can)")
    p.add_argument("--timeout", type=float, default=7200.0, metavar="SECONDS",
                   help="wall-clock limit of the tool run (synthesis + place and route)")
    add_json_output(p, "also write the build report here",
                    default="only DIR/build_report.json")
    add_engine_args(p)

    p = add("report", "cli_report:cmd_report",
            help="write a static HTML report with plots of models, builds, runs, explores",
            description="Write one folder with index.html, PNG plots and report.json (the "
                        "tables' numbers) that opens offline: training curves, per-stage "
                        "cycles against the ideal, resources per block and per device, Fmax "
                        "over seeds, the images/s vs LUT/DSP Pareto fronts, shift histograms. "
                        "Each INPUT is recognised by its content. Needs the 'report' extra "
                        "(matplotlib): pip install 'shiftacc[report]'.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="model artifact (.npz), build folder or build_report.json, "
                        "'sim --json'/'run --json' file, explore folder or results.json")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="report folder, created (written beside it, renamed at the end) "
                        "(required)")
    p.add_argument("--force", action="store_true",
                   help="replace DIR if it is an earlier report (never another folder) "
                        "(default: refuse an existing non-empty DIR)")
    p.add_argument("--config", metavar="PAR.json",
                   help="parallelism config the artifacts' plans are drawn with (default: "
                        "the planner's defaults)")
    p.add_argument("--title", help="page title (default: the inputs' names)")

    _add_explore_commands(add)

    p = add("program", "cli_program:cmd_program",
            help="put a built bitstream on a board (iceprog, openFPGALoader, dfu-util)",
            description="Program a board with the bitstream 'shiftacc build' made: iceprog "
                        "(iCEBreaker), openFPGALoader (ULX3S, ECPIX-5, Colorlight), dfu-util "
                        "(OrangeCrab). $ICEPROG/$OPENFPGALOADER/$DFU_UTIL name other "
                        "executables. Exit 2 for a missing or foreign bitstream, 3 for a "
                        "missing programmer, 4 when it fails or times out (board unplugged, "
                        "no USB permission).")
    p.add_argument("path", metavar="DIR|BITSTREAM",
                   help="a 'shiftacc build' folder (its build_report.json names the board) "
                        "or a .bin (iCE40) / .bit (ECP5) file")
    p.add_argument("--board", metavar="NAME",
                   help="board name from 'shiftacc boards' (default: the one the build "
                        "folder's report names)")
    p.add_argument("--memory", choices=("sram", "flash"),
                   help="configuration RAM (lost at power-off) or the board's flash (default: "
                        "the board's usual: flash on the iCEBreaker and OrangeCrab, "
                        "configuration RAM on the others)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="wall-clock limit of the programmer run (default: 120)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the programmer's command line and run nothing (default: run it)")

    p = add("cache", "cli_hw:cmd_cache", help="show or clear the simulator build cache",
            description="The simulator build cache ($SHIFTACC_CACHE, else ~/.cache/shiftacc) "
                        "keeps one build per design; it is pruned, least recently used first, "
                        "to $SHIFTACC_CACHE_MAX_MB megabytes (default 2048).")
    p.add_argument("action", choices=("info", "clear"), nargs="?", default="info",
                   help="info: list builds, sizes and last use; clear: remove every build "
                        "(default: info)")
    return parser


def _ray_options(p):
    """``--address``, ``--cpus-per-task``, ``--serial`` of ``explore`` and ``regress``."""
    p.add_argument("--address", metavar="auto|HOST:PORT|ray://HOST:PORT",
                   help="Ray cluster to run on: auto (the cluster this machine is part of), "
                        "a head's HOST:PORT, or ray://HOST:PORT (Ray Client); exit 5 when "
                        "nothing answers (default: an embedded Ray on this machine's CPUs)")
    p.add_argument("--cpus-per-task", type=float, default=1.0, metavar="N",
                   help="CPUs Ray reserves for each task")
    p.add_argument("--serial", action="store_true",
                   help="run the tasks one after another in this process, without Ray (the "
                        "baseline) (default: Ray tasks)")


def _add_explore_commands(add):
    """Register ``explore`` and ``regress`` (sw.cli_explore; Ray is the 'explore' extra)."""
    p = add("explore", "cli_explore:cmd_explore",
            help="sweep boards x multiplier budgets x nextpnr seeds as Ray tasks: a results "
                 "table and the Pareto front",
            description="Build every point (board, engine, max_multipliers budget, nextpnr "
                        "seed) of a model as a Ray task: plan (a plan that cannot fit is a "
                        "'refused' row with the reason), build as 'shiftacc build' does into "
                        "DIR/points/KEY/, optionally simulate images on Verilator against "
                        "golden. Rows go to DIR/results.json and DIR/results.csv as points "
                        "finish; a later run with the same --out reuses every 'ok' row. Prints "
                        "the images/s vs LUT and vs DSP Pareto fronts. Exit 4 when a point "
                        "failed (its row says why). Needs the 'explore' extra (Ray).")
    p.add_argument("model", metavar="MODEL.npz", help="artifact")
    p.add_argument("--boards", default="ulx3s-25f", metavar="A,B",
                   help="boards from 'shiftacc boards', comma-separated")
    p.add_argument("--budgets", default="16,32,64", metavar="M,M",
                   help="planner max_multipliers budgets, comma-separated")
    p.add_argument("--engines", default="dataflow", metavar="dataflow[,overlay]",
                   help="accelerator engines (overlay: as 'build --engine overlay', the most "
                        "MAC lanes within the budget)")
    p.add_argument("--seeds", type=positive_int, default=1, metavar="N",
                   help="nextpnr seeds 1..N per point")
    p.add_argument("--freq", type=float, metavar="MHZ",
                   help="target clock in MHz (default: each board's)")
    p.add_argument("--out", metavar="DIR",
                   help="results folder, created if missing; its ok rows are reused "
                        "(default: explore-MODEL)")
    p.add_argument("--no-bitstream", action="store_true",
                   help="write each point's build files only, run no tool (default: Yosys + "
                        "nextpnr for iCE40/ECP5 boards)")
    p.add_argument("--sim-images", type=_int_at_least(0), default=0, metavar="K",
                   help="random images each point simulates on Verilator against golden")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="wall-clock limit of one point's tool run")
    _ray_options(p)

    p = add("regress", "cli_explore:cmd_regress",
            help="simulate N random networks against golden as Ray tasks",
            description="Draw N random networks (widths, shifts, strides, pools, bit widths, "
                        "budgets as benchmarks/random_networks.py does; network k has seed "
                        "SEED*1000+k), simulate each under random stalls and then without, "
                        "against the golden model, one Ray task per network. Prints mismatches "
                        "and predicted vs measured cycles/image; a failing network's artifact, "
                        "images and logs stay in DIR/failures/SEED/ with its replay command. "
                        "Exit 1 when any network differs from golden or stalls.")
    p.add_argument("--count", type=positive_int, default=8, metavar="N", help="networks")
    p.add_argument("--seed", type=_int_at_least(0), default=1, help="base seed")
    p.add_argument("--images", type=_int_at_least(1, 64), default=8, metavar="N",
                   help="random images per network")
    p.add_argument("--simulator", choices=SIMULATORS, default="verilator", help="simulator")
    p.add_argument("--attention", action="store_true",
                   help="place the version-2 ops too (a random subset per network) (default: "
                        "version-1 ops only)")
    p.add_argument("--max-size", type=_int_at_least(5, 12), default=12, metavar="5..12",
                   help="largest image height/width drawn")
    p.add_argument("--max-width", type=_int_at_least(3), default=20, metavar="W",
                   help="largest hidden channel count drawn")
    p.add_argument("--max-blocks", type=_int_at_least(1, 3), default=3, metavar="1..3",
                   help="most shift/conv blocks drawn")
    p.add_argument("--out", metavar="DIR",
                   help="results and failures folder, created if missing (default: "
                        "regress-SEED)")
    _ray_options(p)
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=("dataflow", "overlay"), default="dataflow",
                   help="dataflow: each network's own design under the bulk harness; overlay: "
                        "each network compiled for one overlay config and run behind the host "
                        "link as 'sim --engine overlay' does (a network the overlay refuses is "
                        "drawn again)")
    g.add_argument("--overlay-config", metavar="JSON",
                   help="with --engine overlay: OverlayConfig fields, inline JSON or a file "
                        "(default: OverlayConfig's defaults, or --board's)")
    g.add_argument("--board", metavar="NAME",
                   help="with --engine overlay: the overlay config 'build --board NAME "
                        "--engine overlay' places (icebreaker: the UP5K config on Yosys's "
                        "iCE40 cell models) (default: none)")


class _Terminated(BaseException):
    """SIGTERM arrived; raised in the main thread so that ``finally`` blocks run."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def _error(command, message):
    print(f"shiftacc {command}: error: {message}", file=sys.stderr)


def _typed_input_errors():
    """Library exception types that mean "bad input" (exit 2), among the modules loaded.

    Looked up in ``sys.modules`` so that the CLI imports neither NumPy nor Amaranth just to
    name them: an exception of a module that was never imported cannot have been raised.
    """
    types = []
    for mod, name in (("shiftacc.models.artifact", "ArtifactError"),
                      ("shiftacc.hw.plan", "PlanError")):
        m = sys.modules.get(mod)
        if m is not None and hasattr(m, name):
            types.append(getattr(m, name))
    return tuple(types)


def _missing_tool_message(exc):
    """A one-line "how to install it" message when ``exc`` says a tool is missing, else None."""
    y = sys.modules.get("amaranth._toolchain.yosys")
    if y is not None and isinstance(exc, getattr(y, "YosysError", ())):
        return (f"Amaranth cannot run Yosys to write Verilog ({str(exc).strip()}): "
                f"pip install 'amaranth[builtin-yosys]' (or put a yosys on PATH)")
    return None


def _crash_log(argv, exc):
    """Write the traceback of an internal error to a log file; returns its path (or None)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    text = (f"shiftacc {__version__} internal error at {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
            f"argv: {argv!r}\npython: {sys.version.split()[0]} on {sys.platform}\n\n"
            + "".join(traceback.format_exception(exc)))
    from .cache import cache_root
    for folder in (cache_root(), os.getcwd(), "/tmp"):
        try:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"shiftacc-crash-{stamp}-{os.getpid()}.log")
            with open(path, "w") as f:
                f.write(text)
            return path
        except OSError:
            continue
    return None


def _internal(command, argv, exc):
    log = _crash_log(argv, exc)
    where = f"with the log {log}" if log else "with the traceback below"
    print(f"shiftacc {command}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
    print(f"shiftacc: this is a bug; please report it to {REPORT_TO} {where}", file=sys.stderr)
    if log is None:
        traceback.print_exception(exc)
    return EXIT_INTERNAL


def _run(args):
    module, func = args.handler.split(":")
    mod = importlib.import_module(f".{module}", __package__)
    return int(getattr(mod, func)(args) or 0)


def main(argv=None):
    """Run the CLI and return the process exit status (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage error (2), --help / --version (0)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    argv = list(sys.argv[1:] if argv is None else argv)
    command = args.command
    old_term = None
    import threading
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(f"shiftacc {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _Terminated:
        print(f"shiftacc {command}: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except BrokenPipeError:
        # The reader went away (`shiftacc info M.npz | head`): stop quietly, as `cat` does.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except ShiftaccError as e:
        if e.status == EXIT_INTERNAL:
            return _internal(command, argv, e)
        if args.verbose:
            traceback.print_exc()
        _error(command, e)
        return e.status
    except Exception as e:
        status = None
        msg = _missing_tool_message(e)
        if msg is not None:
            status = EXIT_MISSING
        elif isinstance(e, _typed_input_errors() + (FileNotFoundError, IsADirectoryError,
                                                    NotADirectoryError, PermissionError)):
            status, msg = EXIT_USAGE, str(e)
        if status is None:
            return _internal(command, argv, e)
        if args.verbose:
            traceback.print_exc()
        _error(command, msg)
        return status
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
    sys.exit(main())
