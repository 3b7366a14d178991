"""A short soak in CI (the long one: ``python -m benchmarks.soak --cycles 10000``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conftest import USERNS

from benchmarks.soak import soak

CYCLES = int(os.environ.get("AIOSPACES_SOAK_CYCLES", "400"))


@pytest.mark.timeout(600)
async def test_soak_leaves_nothing_behind() -> None:
    result = await soak(CYCLES, seed=CYCLES, userns=USERNS)
    assert result["ok"], result
    assert sum(result["kinds"].values()) == CYCLES
