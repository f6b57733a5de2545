"""Errors caused by the user's input, and the command-line wrapper that reports them plainly."""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """Bad input (config, data, files): reported as one clear message, without a traceback."""


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's main(); input errors print `error: ...` and exit with status 2."""
    try:
        main()
    except (UserError, FileNotFoundError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
