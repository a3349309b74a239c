"""Session-wide test settings."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _synthetic_cache_in_tmp(tmp_path_factory):
    """Synthetic splits are cached on disk (``$SEGABL_CACHE``): tests, and the scripts they run
    in subprocesses, use a fresh directory instead of the user's ``~/.cache``."""
    old = os.environ.get("SEGABL_CACHE")
    os.environ["SEGABL_CACHE"] = str(tmp_path_factory.mktemp("synthetic-cache"))
    yield
    if old is None:
        os.environ.pop("SEGABL_CACHE", None)
    else:
        os.environ["SEGABL_CACHE"] = old
