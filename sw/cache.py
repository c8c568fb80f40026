"""The simulator build cache: where it is, how big it may grow, and its pruning.

Each Verilator/Icarus build lives in its own folder under :func:`cache_root`, named by the
simulator and a hash of its Verilog (see :mod:`shiftacc.sim.runner`). A build's folder holds
``.shiftacc-built`` once complete and ``.shiftacc-used``, touched on every use; the cache is
kept under :func:`max_bytes` by removing the least recently used builds (:func:`prune`).
Builds used in the last :data:`IN_USE_SECONDS` are never removed: another run may be using
them right now.

This module imports only the standard library (the CLI's ``crash log`` and ``cache``
subcommand use it without loading the simulator side).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

__all__ = ["cache_root", "max_bytes", "builds", "touch", "prune", "clear", "folder_bytes",
           "BUILT_STAMP", "USED_STAMP", "IN_USE_SECONDS", "DEFAULT_MAX_MB"]

BUILT_STAMP = ".shiftacc-built"
USED_STAMP = ".shiftacc-used"
DEFAULT_MAX_MB = 2048
#: A build used (or started) this recently may be in use by another process: never pruned.
IN_USE_SECONDS = 15 * 60


def cache_root():
    """Where builds are cached: ``$SHIFTACC_CACHE`` or ``~/.cache/shiftacc``."""
    return Path(os.environ.get("SHIFTACC_CACHE", Path.home() / ".cache" / "shiftacc"))


def max_bytes():
    """The cache's size bound: ``$SHIFTACC_CACHE_MAX_MB`` megabytes (default 2048).

    Raises
    ------
    ValueError
        The variable is not a non-negative integer.
    """
    raw = os.environ.get("SHIFTACC_CACHE_MAX_MB", str(DEFAULT_MAX_MB))
    try:
        mb = int(raw)
        if mb < 0:
            raise ValueError
    except ValueError:
        raise ValueError(f"SHIFTACC_CACHE_MAX_MB={raw!r}: must be a whole number of megabytes "
                         f">= 0") from None
    return mb << 20


def folder_bytes(path):
    """Disk bytes of the files below ``path`` (0 if it vanished meanwhile)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def _last_use(path):
    for name in (USED_STAMP, BUILT_STAMP):
        try:
            return (path / name).stat().st_mtime
        except OSError:
            continue
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def builds(root=None):
    """The cache's build folders, least recently used first.

    Returns
    -------
    list of dict
        ``path`` (Path), ``bytes``, ``last_use`` (epoch seconds), ``complete`` (bool).
    """
    root = cache_root() if root is None else Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if p.is_dir() and not p.name.startswith("."):
            out.append({"path": p, "bytes": folder_bytes(p), "last_use": _last_use(p),
                        "complete": (p / BUILT_STAMP).exists()})
    return sorted(out, key=lambda b: b["last_use"])


def touch(build_dir):
    """Mark ``build_dir`` as used now (for least-recently-used pruning)."""
    stamp = Path(build_dir) / USED_STAMP
    try:
        stamp.touch()
        os.utime(stamp)
    except OSError:
        pass


def prune(keep=(), root=None, limit=None, now=None, log=None):
    """Remove least recently used builds until the cache fits its bound.

    Parameters
    ----------
    keep : iterable of Path
        Builds never removed (the one the caller is about to use).
    root : Path, optional
        Defaults to :func:`cache_root`.
    limit : int, optional
        Bytes; defaults to :func:`max_bytes`.
    now : float, optional
        Current time (tests).
    log : callable, optional
        Called with a message per removed build.

    Returns
    -------
    list of Path
        The removed build folders.
    """
    limit = max_bytes() if limit is None else limit
    now = time.time() if now is None else now
    keep = {Path(k).resolve() for k in keep}
    entries = builds(root)
    total = sum(b["bytes"] for b in entries)
    removed = []
    for b in entries:
        if total <= limit:
            break
        if b["path"].resolve() in keep or now - b["last_use"] < IN_USE_SECONDS:
            continue
        shutil.rmtree(b["path"], ignore_errors=True)
        total -= b["bytes"]
        removed.append(b["path"])
        if log:
            log(f"[cache] removed least recently used build {b['path']} "
                f"({b['bytes'] / 1e6:.0f} MB)")
    return removed


def clear(root=None):
    """Remove every build of the cache; returns (folders removed, bytes freed)."""
    entries = builds(root)
    for b in entries:
        shutil.rmtree(b["path"], ignore_errors=True)
    return len(entries), sum(b["bytes"] for b in entries)
