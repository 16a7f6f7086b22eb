"""Fixtures for the reliability tests; their helpers are in tests/reliability/helpers.py and
tests/helpers.py.

Training once per session is enough: `trained_store` copies a template store (ingested and
trained, serial, untracked, by tests/helpers.py's `train_store`) into the test's own folder, so a
test that breaks its store breaks nobody else's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import train_store
from tests.reliability.helpers import SLICES, people


# -- the template store ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def template_store(tmp_path_factory) -> Path:
    """A store with 40 records about 20 people, trained once (serial, untracked): model version 1."""
    base = tmp_path_factory.mktemp("reliability-template")
    train_store(base, people(), *SLICES)
    return base / "s"


@pytest.fixture
def trained_store(template_store, tmp_path) -> Path:
    """This test's own copy of the template store."""
    root = tmp_path / "s"
    shutil.copytree(template_store, root)
    return root
