"""``shiftacc program``: put a built bitstream on a board.

The bitstream comes from ``shiftacc build`` (its folder, or the file itself); the board's
programmer and its arguments are the registry's (:data:`shiftacc.boards.registry.PROGRAMMERS`):
iceprog for the iCEBreaker, openFPGALoader for the ULX3S, ECPIX-5 and Colorlight, dfu-util for
the OrangeCrab. The tool runs under a wall-clock limit (``--timeout``), so a programmer waiting
on a board that never answers cannot hang the command.

Errors (:mod:`shiftacc.sw.errors`): no bitstream, a bitstream of another board, a board
without an open programmer → 2; the programmer not installed → 3 (with how to install it);
the programmer failed or timed out (board unplugged, no USB permission) → 4 with its output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

from .errors import BuildFailed, MissingTool, UsageError

__all__ = ["cmd_program", "program_command"]

#: Bitstream file of each family, as ``shiftacc build`` names it (``BUILD_NAME`` + suffix).
_SUFFIX = {"ice40": ".bin", "ecp5": ".bit"}


def _board_of_folder(folder):
    """The board name a build folder's report names (None without a readable report)."""
    rpt = Path(folder) / "build_report.json"
    try:
        return json.loads(rpt.read_text()).get("board")
    except (OSError, ValueError, AttributeError):
        return None


def _bitstream(path, board):
    """The bitstream file for ``board`` at ``path`` (a build folder or the file)."""
    from .cli_build import BUILD_NAME
    suffix = _SUFFIX.get(board.family)
    if suffix is None:
        raise UsageError(f"{board.name} is a {board.family} board: program it with the "
                         f"vendor's tools (shiftacc builds only its files)")
    p = Path(path)
    if p.is_dir():
        built_for = _board_of_folder(p)
        if built_for is not None and built_for != board.name:
            raise UsageError(f"{p} holds a build for {built_for}, not {board.name}: give "
                             f"--board {built_for}, or build for {board.name} first")
        f = p / f"{BUILD_NAME}{suffix}"
        if not f.is_file():
            raise UsageError(f"no bitstream in {p} ({f.name} is missing): run 'shiftacc build "
                             f"MODEL.npz --board {board.name} --out {p}' first")
        return f
    if not p.is_file():
        raise UsageError(f"{p} is neither a build folder nor a bitstream file")
    if p.suffix != suffix:
        raise UsageError(f"{p} is not a {board.family} bitstream: {board.name} takes a "
                         f"{suffix} file (shiftacc build writes {BUILD_NAME}{suffix})")
    return p


def program_command(board, bitstream, memory=None):
    """The programmer's argv for ``bitstream`` on ``board``.

    Parameters
    ----------
    board : boards.registry.Board
    bitstream : path
    memory : {"sram", "flash"}, optional
        Where the bitstream goes (default: the programmer's).

    Returns
    -------
    list of str
        ``[executable, args...]``; the executable is ``$ICEPROG`` / ``$OPENFPGALOADER`` /
        ``$DFU_UTIL`` when set, else the tool's name (not yet looked up on PATH).

    Raises
    ------
    UsageError
        The board has no open programmer, or cannot be programmed into ``memory``.
    """
    from ..boards.registry import PROGRAMMERS
    if board.programmer is None:
        raise UsageError(f"{board.name} has no programmer in shiftacc's board table: program "
                         f"it with the vendor's tools")
    prog = PROGRAMMERS[board.programmer]
    memory = memory or prog.default
    args = prog.sram if memory == "sram" else prog.flash
    if args is None:
        other = "flash" if memory == "sram" else "sram"
        raise UsageError(f"{board.name}: {prog.tool} cannot write its {memory}; use "
                         f"--memory {other}")
    exe = os.environ.get(prog.env) or prog.tool
    f = str(bitstream)
    return [exe] + [a.replace("{bin}", f).replace("{bit}", f) for a in args]


def cmd_program(args):
    """Program a board with a bitstream built by ``shiftacc build``.

    Raises
    ------
    UsageError, MissingTool, BuildFailed
        See the module docstring.
    """
    from ..boards.registry import PROGRAMMERS, UnknownBoard, find_board
    name = args.board or (_board_of_folder(args.path) if Path(args.path).is_dir() else None)
    if not name:
        raise UsageError("give --board NAME (the folder has no build_report.json naming it)")
    try:
        board = find_board(name)
    except UnknownBoard as e:
        raise UsageError(str(e)) from None
    bitstream = _bitstream(args.path, board)
    argv = program_command(board, bitstream, args.memory)
    if args.dry_run:
        print(" ".join(argv))
        return 0
    prog = PROGRAMMERS[board.programmer]
    exe = shutil.which(argv[0])
    if exe is None:
        where = f"${prog.env} names {argv[0]!r}, which" if os.environ.get(prog.env) else \
            f"{argv[0]}"
        raise MissingTool(f"{where} is not installed (or not on PATH): {prog.install}")
    quiet = getattr(args, "quiet", False)
    if not quiet:
        print(f"[program] {board.name}: {' '.join(argv)}", file=sys.stderr, flush=True)
    tail = deque(maxlen=20)
    try:
        proc = subprocess.Popen([exe] + argv[1:], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
    except OSError as e:
        raise MissingTool(f"cannot run {exe}: {e}") from None
    # The tool's output is read on this thread, the deadline is enforced by a timer that
    # kills the tool (a programmer blocked in a USB call prints nothing to wake a reader).
    expired = threading.Event()

    def kill():
        expired.set()
        proc.kill()
    timer = threading.Timer(args.timeout, kill)
    timer.start()
    try:
        for line in proc.stdout:
            tail.append(line.rstrip())
            if not quiet:
                print(f"  {line.rstrip()}", file=sys.stderr, flush=True)
        rc = proc.wait()
    finally:
        timer.cancel()
    if rc != 0 or expired.is_set():
        what = (f"did not finish within {args.timeout:g} s" if expired.is_set()
                else f"failed (exit status {rc})")
        raise BuildFailed(f"{prog.tool} {what} programming {board.name} with {bitstream}; is "
                          f"the board plugged in, and may this user open its USB device "
                          f"(udev rules)? Its last output:\n" + "\n".join(tail))
    memory = args.memory or prog.default
    where = "its flash (kept at power-off)" if memory == "flash" else \
        "its configuration RAM (lost at power-off)"
    print(f"[program] {board.name}: {bitstream} written to {where}")
    return 0
