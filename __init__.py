"""shiftacc: shift networks (zero-FLOP shifts + 1x1 convolutions) to bit-exact FPGA accelerators.

Installed as one import name; the repository's top-level folders are its subpackages:

- :mod:`shiftacc.models` -- artifact, golden model, training and export (training needs the
  ``train`` extra: torch, scikit-learn);
- :mod:`shiftacc.hw` -- Amaranth blocks, planner, accelerator top;
- :mod:`shiftacc.sim` -- cocotb testbenches and their runner;
- :mod:`shiftacc.sw` -- the ``shiftacc`` command line;
- :mod:`shiftacc.boards` -- board targets.
"""

__version__ = "0.2.0"
