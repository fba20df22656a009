"""The house: packages by stage of the data flow, imports pointing one way (pyproject.toml's
import-linter contract), one public API."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
pytestmark = pytest.mark.skipif(LINT is None, reason="import-linter not installed (the test extra has it)")


def _lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([LINT, "--config", str(tree / "pyproject.toml"), "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True)


def test_imports_point_inward() -> None:
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 kept, 0 broken" in r.stdout


@pytest.mark.parametrize("module, line", [
    ("twin/device/build.py", "from twin.runner import RunSpec"),          # a device needing the runner
    ("twin/bench/workflow.py", "from calibration.fit import calibrate_files"),   # twin needing calibration
    ("twin/model/image.py", "from twin.profile import counts"),            # two sibling stages
])
def test_an_import_pointing_back_breaks_the_contract(tmp_path: Path, module: str, line: str) -> None:
    for d in ("twin", "calibration"):
        shutil.copytree(ROOT / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    r = _lint(tmp_path)
    assert r.returncode != 0 and "BROKEN" in r.stdout, r.stdout


def test_the_tree_shows_the_stages() -> None:
    stages = sorted(p.name for p in (ROOT / "twin").iterdir() if (p / "__init__.py").exists())
    assert stages == ["bench", "cli", "device", "model", "profile", "results"]
    loose = sorted(p.name for p in (ROOT / "twin").glob("*.py"))
    assert loose == ["__init__.py", "atomic.py", "platforms.py", "runner.py"]


def test_one_public_api() -> None:
    import calibration
    import twin

    for name in ("RunSpec", "run", "get_platform", "all_platforms", "load_model", "write_image", "read_image",
                 "QuantReference", "BenchSpec", "bench", "write_dataset", "Device", "build_firmware"):
        assert hasattr(twin, name), name
    assert set(twin.__all__) >= {"RunSpec", "run", "bench"}
    for name in ("fit_calibration", "calibrate_files", "predict_from_counts", "twin_counts", "load"):
        assert hasattr(calibration, name), name
    from twin.runner import RunSpec, run  # the old path keeps working
    assert twin.run is run and twin.RunSpec is RunSpec
