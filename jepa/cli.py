"""One error boundary for every command: an expected failure is one ``error:`` line and exit code 2.

Expected failures are ``UserError`` (config, data, checkpoint, device, non-finite training state)
and the machine's own ``OSError`` (disk full, permissions, a directory given for a file). Anything
else is a bug and keeps its traceback; ``JEPA_DEBUG=1`` shows the traceback for everything.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys

from jepa.config.choices import PRECISIONS
from jepa.errors import UserError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a usage error as one ``error:`` line and a pointer to ``--help`` (exit 2), not the usage block."""

    def error(self, message: str):
        print(f"error: {message}\n  see {self.prog} --help", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


def debug() -> bool:
    return os.environ.get("JEPA_DEBUG", "0") not in ("", "0")


def describe_os_error(e: OSError) -> tuple[str, str]:
    """The message and the what-to-do line for an ``OSError`` the machine raised."""
    where = f" {e.filename}" if e.filename else ""
    if isinstance(e, IsADirectoryError):
        return f"{e.filename} is a directory; give the path of a file", ""
    if isinstance(e, NotADirectoryError):
        return f"a part of the path{where} is a file, not a directory", ""
    if isinstance(e, PermissionError):
        return f"permission denied:{where}", "choose a location you can write to, or fix its permissions"
    if e.errno == errno.ENOSPC:
        return f"no space left on the device{':' + where if where else ''}", "free some disk space and run again"
    return f"{e.strerror or e}{':' + where if where else ''}", ""


def run(main, argv: list[str] | None = None) -> int:
    """``main(argv)`` inside the boundary; returns the exit code."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        if debug():
            raise
        print("interrupted: stopped at once (the last checkpoint written is kept)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UserError, OSError) as e:
        if debug():
            raise
        message, hint = (str(e), e.hint) if isinstance(e, UserError) else describe_os_error(e)
        if hint and message.endswith(hint):  # an error that carries its hint in its message too
            message = message[: -len(hint)].rstrip("; ")
        print(f"error: {message}", file=sys.stderr)
        if hint:
            print(f"  {hint}", file=sys.stderr)
        return EXIT_ERROR


def strip_resume(command: list[str]) -> list[str]:
    """``command`` without its ``--resume X`` / ``--resume=X`` (resume hints and requeues add their own)."""
    out, skip = [], False
    for arg in command:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            out.append(arg)
    return out


def add_precision(parser: argparse.ArgumentParser) -> None:
    """``--precision``, for the commands that run an encoder outside training (eval, visualize)."""
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="as training.precision: auto is bf16 on CUDA and on CPUs with bf16 matrix units")
