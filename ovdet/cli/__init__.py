"""The ``ovdet`` command line: ``ovdet predict|ground|embed|convert|check-data|val|train|export|label|track|index|search|serve``.

One module per command family, each with ``register(subparsers)`` (its flags, beside its code)
and ``run(args)``; the flags several commands share are declared once in
:mod:`ovdet.cli.options`, which also builds the typed options (a
:class:`~ovdet.config.PredictConfig`, a class list) once from them.

Each command checks its arguments first (nothing is loaded or created for a command line that
cannot work), then runs through :class:`~ovdet.api.Detector` and prints a summary. Every failure
ends with one ``error: ...`` line and no traceback (``--debug`` shows it): exit code 2 for a wrong
command line (bad values, missing files, a missing flag), 1 for work that failed.
``tools/*.py`` and ``python -m ovdet`` call :func:`main`.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from ovdet.cli import convert, data, embed, export, ground, label, predict, search, serve, track, train, val
from ovdet.cli.options import Formatter, UsageError, check_model_spec, read_classes
from ovdet.config import ConfigError

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "check_model_spec",
    "main",
    "read_classes",
]

#: Exit codes.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: The command modules, in the order ``ovdet --help`` lists their commands.
COMMANDS = (predict, ground, embed, convert, data, val, train, export, label, track, search, serve)


def build_parser() -> argparse.ArgumentParser:
    """The ``ovdet`` parser: every command module registers its sub-command(s)."""
    parser = argparse.ArgumentParser(
        prog="ovdet", description="Open-vocabulary object detection.", formatter_class=Formatter
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and native decoder messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ovdet`` console script; returns the exit code.

    argparse reports malformed command lines itself (exit 2). Afterwards a :class:`UsageError`,
    a missing file, a refused pickle or an invalid config value exits with 2, anything else
    that fails with 1, each as one ``error:`` line on stderr (a traceback only with ``--debug``
    or ``OVDET_DEBUG=1``).
    """
    from ovdet.weights import UntrustedCheckpointError

    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("OVDET_DEBUG", "") not in ("", "0")
    args.debug = debug
    if debug:  # the process entry point: lower layers read it (e.g. to leave ffmpeg's logging on)
        os.environ["OVDET_DEBUG"] = "1"
    try:
        return int(args.func(args) or EXIT_OK)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the one place every failure becomes a message
        if debug:
            traceback.print_exc()
        usage = isinstance(e, (UsageError, FileNotFoundError, UntrustedCheckpointError, ConfigError))
        message = str(e) or type(e).__name__
        if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in message:
            message = f"{message}: {e.filename}"
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE if usage else EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
