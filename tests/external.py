"""External tools and data sets some tests need: without one a test skips and says how to get it; under
``CI=true`` it fails instead, so CI never passes by skipping.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

DICOM3TOOLS = "apt-get install dicom3tools (CI installs it in .ci/run)"
PLASTIMATCH = "apt-get install plastimatch (CI installs it in .ci/run)"
SYSTEMD = "apt-get install systemd, for systemd-analyze (CI installs it in .ci/run)"
NGINX = "apt-get install nginx (the server's TLS proxy; CI installs it in .ci/run)"


def missing(what: str, how: str) -> NoReturn:
    """Skip the test (fail it under ``CI=true``): ``what`` is not there, ``how`` gets it."""
    message = f"{what} not found: {how}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_tool(name: str, how: str) -> str:
    """The path of the executable ``name`` on PATH; without it the test skips (fails under ``CI=true``)."""
    path = shutil.which(name)
    if path is None:
        missing(name, how)
    return path


def require_data(path: Path, how: str) -> Path:
    """``path`` when it exists; without it the test skips (fails under ``CI=true``)."""
    if not path.exists():
        missing(str(path), how)
    return path
