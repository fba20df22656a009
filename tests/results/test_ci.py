"""`twin ci`: a real matrix (QEMU) against a baseline; exit 1 on a regression, 0 on its own baseline,
2 on a broken set-up; the JUnit file parses and names the failing cells."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.qemu
TWIN = str(Path(sys.executable).with_name("twin"))
CONFIG = "matrix:\n  platforms: [mps2-an386, riscv32-virt]\n  bits: [4]\n  tokens: 3\nthreshold_percent: 2\n"


def twin_ci(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TWIN, "ci", "--config", str(tmp / "twin-ci.yaml"), "--db", str(tmp / "ci.sqlite"), *args],
                          capture_output=True, text=True, cwd=tmp, timeout=300)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ci")
    (tmp / "twin-ci.yaml").write_text(CONFIG)
    r = twin_ci(tmp, "--baseline", str(tmp / "base.json"), "--update-baseline")
    assert r.returncode == 0, r.stderr
    return tmp


def test_its_own_baseline_passes(recorded: Path) -> None:
    r = twin_ci(recorded, "--baseline", str(recorded / "base.json"), "--json", "--junit", str(recorded / "ok.xml"))
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["passed"] and not out["failing_cells"] and len(out["cells"]) == 2
    suite = ET.parse(recorded / "ok.xml").getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "0"


def test_an_injected_regression_fails_and_is_named(recorded: Path, tmp_path: Path) -> None:
    doc = json.loads((recorded / "base.json").read_text())
    cell = sorted(doc["cells"])[0]
    doc["cells"][cell]["counts"]["decode_instructions_mean"] /= 1.05       # today's counts are 5% higher
    other = sorted(doc["cells"])[1]
    board = sorted(doc["cells"][other]["predictions"])[0]
    doc["cells"][other]["predictions"][board]["token_s"] *= 1.01           # 1% slower baseline: an improvement
    (tmp_path / "edited.json").write_text(json.dumps(doc))
    r = twin_ci(recorded, "--baseline", str(tmp_path / "edited.json"), "--junit", str(tmp_path / "j.xml"),
                "--summary", str(tmp_path / "s.md"), "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["failing_cells"] == [cell]
    bad = [f for f in out["findings"] if f["verdict"] == "regression"]
    assert [(f["cell"], f["metric"]) for f in bad] == [(cell, "decode_instructions_mean")]
    assert bad[0]["change_percent"] == pytest.approx(5.0, abs=1e-6)
    assert any(f["cell"] == other and f["verdict"] == "improved" for f in out["findings"])
    suite = ET.parse(tmp_path / "j.xml").getroot()
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == [cell]
    assert f"`{cell}`" in (tmp_path / "s.md").read_text() and "**regression**" in (tmp_path / "s.md").read_text()
    # a growth below the threshold is reported, not failed (counts are deterministic: any change shows)
    doc["cells"][cell]["counts"]["decode_instructions_mean"] *= 1.05 / 1.01
    (tmp_path / "small.json").write_text(json.dumps(doc))
    r = twin_ci(recorded, "--baseline", str(tmp_path / "small.json"), "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and any(f["verdict"] == "changed" and f["cell"] == cell for f in out["findings"])
    r = twin_ci(recorded, "--baseline", str(tmp_path / "small.json"), "--json", "--threshold", "0.5%")
    assert r.returncode == 1


def test_a_broken_set_up_exits_2(recorded: Path, tmp_path: Path) -> None:
    r = twin_ci(recorded, "--baseline", str(tmp_path / "none.json"))
    assert r.returncode == 2 and "not found" in r.stderr and "--update-baseline" in r.stderr
    (tmp_path / "bad.json").write_text("{not json")
    r = twin_ci(recorded, "--baseline", str(tmp_path / "bad.json"))
    assert r.returncode == 2 and "not valid JSON" in r.stderr
    (tmp_path / "twin-ci.yaml").write_text("matrix:\n  platform: [mps2-an386]\n")
    r = subprocess.run([TWIN, "ci", "--config", str(tmp_path / "twin-ci.yaml"), "--baseline",
                        str(recorded / "base.json")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "unknown matrix field(s) platform" in r.stderr


def test_a_cell_missing_from_the_run_fails(recorded: Path, tmp_path: Path) -> None:
    doc = json.loads((recorded / "base.json").read_text())
    first = next(iter(doc["cells"].values()))
    doc["cells"]["ghost-platform/builtin/q4g32/pdefault/t3/s0/kv-f32"] = first
    (tmp_path / "more.json").write_text(json.dumps(doc))
    r = twin_ci(recorded, "--baseline", str(tmp_path / "more.json"), "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 1 and any(f["verdict"] == "missing" for f in out["findings"])
