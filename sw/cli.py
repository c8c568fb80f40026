"""The ``shiftacc`` command line: one entry point, one subcommand per job.

Subcommands are registered by the modules that implement them (``sw.cli_model`` for
train/golden/info, ``sw.cli_hw`` for generate/sim), so each stays small.
"""

import argparse
import sys


def build_parser():
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="shiftacc",
        description="Shift networks to bit-exact FPGA accelerators.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    from . import cli_hw, cli_model
    cli_model.register(sub)
    cli_hw.register(sub)
    return parser


def main(argv=None):
    """Run the CLI; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
