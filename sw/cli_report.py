"""``shiftacc report``: the command-line side of :mod:`shiftacc.sw.report`.

The options are declared in :mod:`shiftacc.sw.cli`; this module reads the inputs, checks the
output folder before any plot is drawn, and writes the report. Errors are raised
(:mod:`shiftacc.sw.errors`) and mapped to exit statuses by :func:`shiftacc.sw.cli.main`:
an input that is none of the known kinds, or an output folder that may not be replaced,
exits 2; a missing matplotlib exits 3 naming ``pip install 'shiftacc[report]'``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["cmd_report"]


def cmd_report(args):
    """Write the HTML report of ``args.inputs`` into ``args.out``."""
    from .report import load_input, write_report
    config = None
    if args.config:
        from ..hw.plan import load_config
        config = load_config(args.config)
    inputs = [load_input(p) for p in args.inputs]
    say = (lambda *a, **k: None) if args.quiet else print
    write_report(inputs, Path(args.out), force=args.force, config=config, title=args.title,
                 say=say)
    if not args.quiet:
        print(f"[report] open file://{(Path(args.out) / 'index.html').resolve()}")
    return 0
