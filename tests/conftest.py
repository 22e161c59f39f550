"""Suite-wide set-up: every pykka actor a test starts is stopped, even when the test fails;
hypothesis is derandomised under CI."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pykka
import pytest
from hypothesis import settings

# CI must be reproducible: the same examples every run (a developer's run still explores).
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=10)
