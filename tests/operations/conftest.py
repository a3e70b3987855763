"""Fixtures for the operator's actions: an Operations object aimed at the session's local world."""

from __future__ import annotations

import uuid

import pytest

from tokenkeeper.operations import Operations


class ProgressRecorder:
    """Collect the progress lines an action reports."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, int, str, str]] = []

    def __call__(self, index: int, total: int, subject: str, outcome: str) -> None:
        self.lines.append((index, total, subject, outcome))


@pytest.fixture
def progress():
    return ProgressRecorder()


@pytest.fixture
def operations(fresh_world, progress):
    return Operations(fresh_world.runtime(), clock=fresh_world.clock, progress=progress)


@pytest.fixture
def new_id():
    return lambda: f"org-{uuid.uuid4().hex[:12]}"
