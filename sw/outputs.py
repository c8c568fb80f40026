"""Output files of the command line: checked before the work, written atomically.

Every subcommand that writes a file follows the same rules:

- the path is checked **before** the long work starts (:func:`check_output`): its folder must
  exist (or, for the outputs a command creates folders for, be creatable) and be writable, it must not be a folder itself, and it must not be one of the
  command's inputs (not even with ``--force``: ``golden M.npz --json M.npz`` would replace
  the model by its own logits);
- an existing file is replaced only with ``--force``;
- the content is written to a temporary file in the same folder and moved over the target
  with :func:`os.replace` (:func:`write_atomic`, :func:`atomic_path`), so a crash or Ctrl-C
  never leaves half a file, and the old file stays intact until the new one is complete.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import UsageError

__all__ = ["check_output", "check_output_dir", "same_file", "write_atomic", "atomic_path"]


def same_file(a, b):
    """True when paths ``a`` and ``b`` name the same file (also through links)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _check_folder(folder, what):
    if not folder.exists():
        raise UsageError(f"{what}: folder {folder} does not exist (create it first)")
    if not folder.is_dir():
        raise UsageError(f"{what}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{what}: folder {folder} is not writable")


def check_output(path, *, what, inputs=(), force=False, create_parents=False):
    """Refuse, up front, an output file that could not or should not be written.

    Parameters
    ----------
    path : str or Path
        The file the command will write.
    what : str
        How the user named it, for messages (e.g. ``"--json"``).
    inputs : iterable of str or Path
        The command's input files; the output may not be one of them.
    force : bool
        Replace an existing file (``--force``).
    create_parents : bool
        The command creates a missing folder (``train --out out/m.npz``): then only check
        that it can be created (no file in the way, the nearest existing folder writable).

    Returns
    -------
    Path

    Raises
    ------
    UsageError
        The folder is missing (unless ``create_parents``) or not writable, the path is a
        folder, the path is one of the inputs, or the file exists and ``force`` is false.
    """
    path = Path(path)
    for src in inputs:
        if src is not None and same_file(path, src):
            raise UsageError(f"{what} {path} is also an input of this command; "
                             f"refusing to overwrite it: choose another file")
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder; give a file name")
    if create_parents and not path.parent.exists():
        check_output_dir(path.parent, what=what)
    else:
        _check_folder(path.parent if str(path.parent) else Path("."), what)
    if path.exists() and not force:
        raise UsageError(f"{what} {path} already exists; pass --force to replace it")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{what} {path} is not writable")
    return path


def check_output_dir(path, *, what):
    """Refuse, up front, an output folder that cannot be created or written.

    The folder may exist (it must then be a writable folder) or not (its parent must then be
    writable: it is created, with missing parents, by the command).

    Returns
    -------
    Path

    Raises
    ------
    UsageError
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{what} {path} is a file, not a folder")
        _check_folder(path, what)
        return path
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{what} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: cannot create it, {parent} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path):
    """Context manager: a temporary path beside ``path`` that replaces it on success.

    The temporary file keeps ``path``'s suffix (so writers that look at it, like
    :func:`numpy.savez`, behave); it is removed if the block raises.

    Yields
    ------
    Path
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}",
                               dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    tmp = Path(tmp)
    # mkstemp makes the file private (0600); give it the mode a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path, data):
    """Write ``data`` (str or bytes) to ``path`` atomically (temporary file + os.replace)."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            data = data.encode("utf-8")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
