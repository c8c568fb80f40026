"""Names the command line offers as choices, without importing torch or scikit-learn.

``shiftacc --help`` and the torch-free subcommands (info, golden, generate, sim) must not
import the training stack just to fill argparse's ``choices``; the names live here instead.
``tests/test_cli_fast.py`` checks that they equal the real tables
(:data:`shiftacc.models.nets.PRESETS`, :data:`shiftacc.models.shift.METHODS`,
:data:`shiftacc.models.data.DATASETS`), so a new preset or method cannot be forgotten here.
"""

__all__ = ["DATASETS", "DEVICES", "ENGINES", "ENGINE_AUTO", "METHODS", "PRESETS",
           "SIMULATORS", "add_engine_args"]

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

#: Compositions ``generate``, ``sim`` and ``serve`` build (DESIGN.md §3): one engine per layer
#: (``dataflow``, one topology per bitstream) or one program-driven engine reused layer after
#: layer (``overlay``, every model of one I/O per bitstream).
ENGINES = ("dataflow", "overlay")


#: ``--engine auto`` (``build``'s default): the engine the board's device takes, chosen by
#: :func:`shiftacc.sw.cli_build.choose_engine` (the faster of the engines that fit).
ENGINE_AUTO = "auto"

#: Subcommands whose ``--engine`` defaults to :data:`ENGINE_AUTO`: they know the device.
_AUTO_COMMANDS = ("build",)

#: Subcommands that know a device only with ``--board``: their ``--engine`` default is None,
#: read as the engine ``build --board`` chooses there, else ``dataflow``
#: (:func:`shiftacc.sw.cli_hw.resolve_engine`).
_BOARD_AUTO_COMMANDS = ("sim", "serve")


def add_engine_args(parser, default=None):
    """Add ``--engine`` and the overlay's configuration options to ``parser``.

    ``--engine overlay`` builds the overlay engine, configured by ``--overlay-config`` (a JSON
    object of ``OverlayConfig`` fields, inline or in a file) and then ``--lanes`` /
    ``--requant-units``; with ``--engine dataflow`` those options are an error,
    as ``--config`` (the dataflow planner's) is with ``--engine overlay``
    (:func:`shiftacc.sw.cli_hw.engine_plan` reads and checks them).

    Parameters
    ----------
    parser : argparse.ArgumentParser
    default : str, optional
        ``--engine``'s default: ``"auto"`` (and ``auto`` among the choices) for a command that
        builds for a device, else ``"dataflow"``. None: ``"auto"`` for the subcommands of
        :data:`_AUTO_COMMANDS` (``build``: the parser's ``prog`` ends with its name; no device,
        no choice, so ``generate``, ``sim`` and ``serve`` keep ``dataflow``).
    """
    board_auto = False
    if default is None:
        words = (getattr(parser, "prog", "") or "").split()
        default = ENGINE_AUTO if words and words[-1] in _AUTO_COMMANDS else "dataflow"
        board_auto = bool(words) and words[-1] in _BOARD_AUTO_COMMANDS
    auto = default == ENGINE_AUTO
    g = parser.add_argument_group("engine (DESIGN.md §3)")
    g.add_argument("--engine", choices=ENGINES + ((ENGINE_AUTO,) if auto else ()),
                   default=None if board_auto else default,
                   help=("auto: the faster of the two engines that fit the board's device "
                         "(the report says which and why); " if auto else "")
                   + "dataflow: one engine per layer, built for this model's topology; "
                     "overlay: one engine reused layer after layer, running any model with "
                     "this input shape, input bits and class count that fits its config"
                   + (" (default: auto)" if auto else
                      " (default: with --board the engine 'build --board' chooses there, "
                      "else dataflow)" if board_auto else " (default: dataflow)"))
    g.add_argument("--overlay-config", metavar="JSON",
                   help="with --engine overlay: OverlayConfig fields as a JSON object, inline "
                        "('{\"lanes\": 8}') or a file (lanes, requant_units, fm_words, "
                        "weight_rows, channel_rows, gather_rows, max_passes, primitives) "
                        "(default: the OverlayConfig defaults)")
    g.add_argument("--lanes", type=int, metavar="P",
                   help="with --engine overlay: MAC lanes, even, 2..64 (default: 16, or "
                        "--overlay-config's)")
    g.add_argument("--requant-units", type=int, choices=(1, 2),
                   help="with --engine overlay: requant multipliers (default: 2, or "
                        "--overlay-config's)")
