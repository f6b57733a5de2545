"""The command line's outer layer: run a script's main() and report its end plainly.

Input and machine errors print one `error: ...` line and exit with status 2 (written to the run's
log.txt too); the run lock and the process group are released however the script ended.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from utils import distributed, run_lock
from utils.errors import UserError
from utils.run_dir import RunFinished


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's main(); input errors print `error: ...` and exit with status 2.

    Every error that stops a run is also written to the run's log.txt when it has one, so a
    folder left by a failed run says why it failed.
    """
    try:
        main()
    except RunFinished as done:  # --continue on a finished run
        print(done)
    except (UserError, FileNotFoundError, FloatingPointError) as err:
        _log_to_file(f"error: {err}")
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as err:  # the machine's side (disk full, quota, permissions): one line, no traceback
        if err.errno is None:
            raise
        message = f"error: {os_error_text(err)}"
        _log_to_file(message)
        print(message, file=sys.stderr)
        raise SystemExit(2) from None
    except BaseException as err:
        _log_to_file(f"stopped by {type(err).__name__}: {err}")
        raise
    finally:
        run_lock.release_all()
        distributed.shutdown()


def os_error_text(err: OSError) -> str:
    """'PATH: cause' of an operating-system error, on one line."""
    cause = err.strerror or os.strerror(err.errno) if err.errno else str(err)
    return f"{err.filename}: {cause}" if err.filename else cause


def _log_to_file(message: str) -> None:
    """Write `message` to the log files of the 'deft' logger only (the terminal gets it separately)."""
    record = logging.LogRecord("deft", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger("deft").handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
