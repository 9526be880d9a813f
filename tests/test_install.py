"""Installing as the README says a contributor does: a plain `pip install -e .` into a new
virtualenv gives `twistd` the eformws plugin (a PEP 660 editable install hid it once:
`twistd: Unknown command: eformws`). Needs the package index pip is configured with."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import pytest_twisted
from processes import run

REPO = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT = 300.0
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "artifacts", "node_modules", "*.egg-info", "__pycache__", "*.db*")


@pytest.mark.slow  # ~22 s: a new virtualenv and a pip install
@pytest_twisted.ensureDeferred
async def test_a_plain_editable_install_gives_twistd_the_eformws_plugin(tmp_path):
    checkout = tmp_path / "eformws"
    shutil.copytree(REPO, checkout, ignore=NOT_SOURCE)
    venv = tmp_path / "venv"
    out, err, code = await run(sys.executable, "-m", "venv", str(venv), cwd=tmp_path)
    assert code == 0, err
    out, err, code = await run(str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                               "-e", str(checkout), cwd=tmp_path, timeout=INSTALL_TIMEOUT)
    assert code == 0, err
    elsewhere = tmp_path / "elsewhere"  # not the checkout: the plugin must come from the install
    elsewhere.mkdir()
    out, err, code = await run(str(venv / "bin" / "twistd"), "eformws", "--help", cwd=elsewhere)
    assert (code, out.splitlines()[0]) == (0, "Usage: twistd [options] eformws [--config FILE] [--port PORT] [--host HOST]"), err
