"""Shared fixtures: the real OpenKBP patients in ../shared/data and an isolated case cache."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from external import require_data

REPO = Path(__file__).resolve().parents[1]
OPENKBP = REPO.parent / "shared" / "data" / "openkbp"

# One cache for the whole test session, so each real patient is parsed from CSV once.
os.environ.setdefault("FEDRT_CACHE", tempfile.mkdtemp(prefix="fedrt-test-cache-"))


@pytest.fixture(scope="session")
def openkbp_root() -> Path:
    return require_data(OPENKBP, "put the OpenKBP patients (train-pats/, validation-pats/ of "
                                 "github.com/ababier/open-kbp) in ../shared/data/openkbp beside the repository")


@pytest.fixture(scope="session")
def protocol():
    from protocols.protocol import load_protocol

    return load_protocol("hn-openkbp")
