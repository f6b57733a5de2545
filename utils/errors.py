"""The base of every error caused by the user's input (reported as one line, without a traceback).

A leaf module: it imports nothing of this repository, so every module may raise these errors.
"""
from __future__ import annotations

import pickle


class UserError(Exception):
    """Bad input (config, data, files): reported as one clear message, without a traceback."""


def weight_file_error_detail(err: Exception) -> str:
    """The reason a weight file did not load, on one line; never torch's advice to load with
    weights_only=False, which would run the file's code."""
    if isinstance(err, pickle.UnpicklingError) or "weights_only" in str(err):
        return "not a tensor-only file: it is damaged, or holds pickled objects, which are never loaded"
    return " ".join(str(err).split())[:300] or "no details"
