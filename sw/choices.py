"""Names the command line offers as choices, without importing torch or scikit-learn.

``shiftacc --help`` and the torch-free subcommands (info, golden, generate, sim) must not
import the training stack just to fill argparse's ``choices``; the names live here instead.
``tests/test_cli_fast.py`` checks that they equal the real tables
(:data:`shiftacc.models.nets.PRESETS`, :data:`shiftacc.models.shift.METHODS`,
:data:`shiftacc.models.data.DATASETS`), so a new preset or method cannot be forgotten here.
"""

__all__ = ["DATASETS", "DEVICES", "METHODS", "PRESETS", "SIMULATORS"]

#: Data sets :func:`shiftacc.models.data.load_split` reads.
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
#: Shift selection methods (:data:`shiftacc.models.shift.METHODS`).
METHODS = ("grouped", "sal", "rasl", "sparse")
#: Network presets (the keys of :data:`shiftacc.models.nets.PRESETS`), sorted.
PRESETS = ("cifar10-s", "digits-m", "digits-s", "digits-xs", "mnist-s")
#: Devices ``shiftacc train --device`` accepts (``auto``: CUDA when torch sees one).
DEVICES = ("cpu", "cuda", "auto")
#: Simulators ``shiftacc sim`` runs.
SIMULATORS = ("verilator", "icarus")
