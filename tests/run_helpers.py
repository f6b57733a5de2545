"""Helpers shared by the end-to-end tests: stopping a run on purpose, and the miniature's data."""
from __future__ import annotations

import os

import pytest


def stop_at_call(monkeypatch, module, call: int, error: type = KeyboardInterrupt):
    """Make `module.train_one_epoch` raise `error` on its `call`-th call (a kill or crash in that epoch).

    Returns the real function, to put back before resuming.
    """
    real, calls = module.train_one_epoch, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise error("stopped by the test")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "train_one_epoch", dying)
    return real


def require_fashion_mnist(data_path: str = "./data/fashion-mnist") -> None:
    """Skip (or fail, with DEFT_REQUIRE_MINIATURE set, as in CI) when Fashion-MNIST is missing."""
    from datasets.fashion_mnist import _find

    if _find(data_path, "train") is None or _find(data_path, "test") is None:
        message = "Fashion-MNIST not found (apt-get install dataset-fashion-mnist)"
        if os.environ.get("DEFT_REQUIRE_MINIATURE"):
            pytest.fail(message)
        pytest.skip(message)
