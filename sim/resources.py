"""Data files shipped inside the package, found through :mod:`importlib.resources`."""

from importlib import resources
from pathlib import Path

__all__ = ["verilator_waivers"]


def verilator_waivers():
    """Path of ``hw/verilator_waivers.vlt`` (the one place Verilator lint waivers live).

    Verilator reads it by file name, so this returns a real path: the package is installed
    as files (regular or editable install), never zipped.
    """
    return Path(str(resources.files("shiftacc.hw").joinpath("verilator_waivers.vlt")))
