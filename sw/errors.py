"""The exceptions ``shiftacc`` subcommands raise, and the exit status each one maps to.

Subcommands do not print errors or pick exit codes themselves: they raise one of these and
:func:`shiftacc.sw.cli.main` maps it, in one place, to a one-line message and a status:

====  ===================================================================================
0     success
1     the hardware disagrees with the golden model, or stalled (:class:`HardwareFailure`)
2     bad input or usage: a bad artifact, config, image file, path or option
      (:class:`UsageError`; argparse's own usage errors exit 2 too)
3     a tool or an optional extra is missing (:class:`MissingTool`, :class:`MissingExtra`)
4     a simulator or synthesis build failed (:class:`BuildFailed`)
70    internal error: a bug; the traceback goes to a log file whose name is printed
130   interrupted (SIGINT / Ctrl-C); 143 terminated (SIGTERM)
====  ===================================================================================

This module imports nothing heavy, so that the lower layers (``shiftacc.sim``) can raise the
same types without pulling in the command line.
"""

__all__ = ["ShiftaccError", "UsageError", "HardwareFailure", "Mismatch", "Stalled",
           "MissingTool", "MissingExtra", "BuildFailed", "InternalError", "EXIT_OK",
           "EXIT_MISMATCH", "EXIT_USAGE", "EXIT_MISSING", "EXIT_BUILD", "EXIT_LINK",
           "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_TERMINATED", "require_extra"]

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_USAGE = 2
EXIT_MISSING = 3
EXIT_BUILD = 4
EXIT_LINK = 5  # the link failed: device unreachable, silent, or refusing frames
EXIT_INTERNAL = 70  # EX_SOFTWARE of sysexits.h
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class ShiftaccError(Exception):
    """Base of the errors ``shiftacc`` reports in words; ``status`` is the exit status."""

    status = EXIT_INTERNAL


class UsageError(ShiftaccError, ValueError):
    """Bad input or usage: a missing or malformed file, a bad option value, a refused path."""

    status = EXIT_USAGE


class HardwareFailure(ShiftaccError):
    """The simulated hardware did not compute what the golden model computes."""

    status = EXIT_MISMATCH


class Mismatch(HardwareFailure):
    """Some logits differ from the golden model's."""


class Stalled(HardwareFailure, RuntimeError):
    """The design stopped moving data before the deadline; the message names the stage.

    Attributes
    ----------
    result : dict or None
        The testbench's partial result, with its ``stall`` diagnosis, when there is one.
    """

    def __init__(self, message, result=None):
        super().__init__(message)
        self.result = result


class MissingTool(ShiftaccError, RuntimeError):
    """A program the command needs is not installed; the message says how to install it."""

    status = EXIT_MISSING


class MissingExtra(MissingTool):
    """An optional dependency group of the package (a pip "extra") is not installed."""


class BuildFailed(ShiftaccError, RuntimeError):
    """Building a simulation model (Verilator/Icarus) failed; the message names the log."""

    status = EXIT_BUILD


class InternalError(ShiftaccError, RuntimeError):
    """Something that should not happen did (e.g. the simulator ended without a result)."""

    status = EXIT_INTERNAL


def require_extra(module, extra, purpose):
    """Import ``module`` or raise :class:`MissingExtra` naming the pip command.

    Parameters
    ----------
    module : str
        Module to import, e.g. ``"torch"``.
    extra : str
        The package extra that provides it, e.g. ``"train"``.
    purpose : str
        What needs it, e.g. ``"shiftacc train"``; the message reads "PURPOSE needs ...".

    Returns
    -------
    module

    Raises
    ------
    MissingExtra
    """
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{purpose} needs the '{extra}' extra ({module} is not installed): "
                           f"pip install 'shiftacc[{extra}]'") from None
