"""Shared fixtures: a project root, tiny params, and a git identity for DVC experiments."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture
def root() -> Path:
    return ROOT

