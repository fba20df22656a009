"""Every reporting verb of the CLI with --json prints one strict JSON document: no NaN, no Infinity
(Python's json module writes them by default; every other parser rejects them), nothing else on stdout.

The verbs come from `twin --help`; a new verb with --json fails here until it gets a case below.
Emulator-backed verbs run once each, on mps2-an386 (or a board it stands for), with few tokens."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TWIN = str(Path(sys.executable).with_name("twin"))
EVAL_TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
             "must be in want of a wife.")


def strict_loads(text: str):
    def refuse(name: str):
        raise ValueError(f"{name} is not JSON (a strict parser refuses it)")
    return json.loads(text, parse_constant=refuse)


def twin_json(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None):
    r = subprocess.run([TWIN, *args], capture_output=True, text=True, timeout=600, cwd=cwd,
                       env={**os.environ, "COLUMNS": "200", **(env or {})})
    assert r.returncode == 0, f"twin {' '.join(args)}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    try:
        return strict_loads(r.stdout)
    except ValueError as exc:
        raise AssertionError(f"twin {' '.join(args)} --json is not strict JSON: {exc}\n{r.stdout[:3000]}") from None


def _verbs_with_json() -> set[str]:
    from twin.cli.main import main

    out = subprocess.run([TWIN, "--help"], capture_output=True, text=True, check=True).stdout
    listed = out.split("Commands:", 1)[1].splitlines()
    names = {line.split()[0] for line in listed if line.strip()}
    return {n for n in names if any("--json" in p.opts for p in main.commands[n].params)}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("json")
    (d / "eval.txt").write_text(EVAL_TEXT)
    return d


@pytest.fixture(scope="module")
def image(work) -> Path:
    out = work / "small.twlm"
    info = twin_json("image", "--dim", "16", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--hidden", "32",
                     "--vocab", "64", "--context", "32", "-o", str(out), "--json")
    assert info["output"] == str(out) and info["bytes"] == out.stat().st_size
    return out


@pytest.fixture(scope="module")
def bench_csv(work) -> Path:
    out = work / "bench.csv"
    summary = twin_json("bench", "--port", "qemu", "--platform", "mps2-an386", "--model", "none",
                        "-o", str(out), "--json")
    assert summary["rows"] >= 18
    return out


@pytest.fixture(scope="module")
def calibration_file(work, bench_csv) -> Path:
    """The bench rows with cycles from a hidden per-class cost model (QEMU's counter reads 0)."""
    import csv

    from twin.profile import isa

    hidden = {"alu": 1.0, "load": 2.2, "store": 1.1, "mul": 1.0, "div": 7.0, "branch": 2.6, "fp": 1.3,
              "fdiv": 14.0, "simd": 1.0, "other": 1.0}
    with bench_csv.open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["cycles"] = str(round(sum(hidden[c] * int(row[f"n_{c}"]) for c in isa.CLASSES)))
        row["cycle_counter"] = "dwt"
    measured = work / "measured.csv"
    with measured.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = work / "cal.json"
    summary = twin_json("calibrate", str(measured), "-o", str(out), "--json")
    assert summary["output"] == str(out)
    strict_loads(out.read_text())          # the file itself, too
    return out


def test_every_json_verb_has_a_case():
    assert _verbs_with_json() == set(CASES), "add a case for each verb that has --json"


def _platforms(work, **_):
    rows = twin_json("platforms", "--json")
    assert {"mps2-an386", "nrf52840-dk"} <= {r["id"] for r in rows}


def _build(work, **_):
    out = twin_json("build", "--platform", "mps2-an386", "--json")
    assert out["firmware"][0]["platform"] == "mps2-an386"


def _image(work, image, **_):
    assert image.exists()


def _fit(work, image, **_):
    rows = twin_json("fit", "--model", str(image), "--platform", "mps2-an386", "--platform", "rpi-pico", "--json")
    assert [r["platform"] for r in rows] == ["mps2-an386", "rpi-pico"]


def _quantize(work, **_):
    rows = twin_json("quantize", "--bits", "4,8", "--eval", str(work / "eval.txt"), "--max-tokens", "16", "--json")
    assert [r["bits"] for r in rows] == [4, 8]


def _run(work, **_):
    r = twin_json("run", "--platform", "mps2-an386", "--tokens", "2", "--json")
    assert r["matches_reference"] and len(r["tokens"]) == 2 and r["unavailable"] == {}
    # Renode's report (its null fields and "unavailable"), under the fake pyrenode3 (tests/fixtures/fake_renode.py)
    tests = Path(__file__).resolve().parents[1]
    fake = {"PYTHONPATH": os.pathsep.join([str(tests / "fixtures" / "pyrenode3_fake"), str(tests)]), "TWIN_NO_RENODE": ""}
    r = twin_json("run", "--platform", "mps2-an386", "--emulator", "renode", "--tokens", "2", "--json", env=fake)
    assert r["matches_reference"] and r["emulator"] == "renode" and "functions" in r["unavailable"]


def _demo(work, **_):
    (r,) = twin_json("demo", "--platforms", "mps2-an386", "--tokens", "2", "--json")
    assert r["platform"] == "mps2-an386"


def _bench(work, bench_csv, **_):
    assert bench_csv.exists()


def _calibrate(work, calibration_file, **_):
    assert calibration_file.exists()


def _predict(work, calibration_file, **_):
    prior = twin_json("predict", "--platform", "nrf52840-dk", "--tokens", "2", "--voltage", "1.8", "--json")
    assert prior["calibration"] == "prior" and prior["voltage_v"] == 1.8
    cal = twin_json("predict", "--platform", "nrf52840-dk", "--tokens", "2", "--calibration", str(calibration_file),
                    "--json")
    assert cal["calibration"].startswith("cal-cortex-m4f-")
    if shutil.which("llvm-mca"):
        with_mca = twin_json("predict", "--platform", "nucleo-l4r5zi", "--tokens", "2", "--mca", "--json")
        assert "mca" in with_mca
    cross = twin_json("predict", "--platform", "esp32-s3-devkit", "--tokens", "2", "--json")   # cross-core
    assert cross["twin"]["cross_core"]


def _compare(work, calibration_file, **_):
    rows = twin_json("compare", "--platforms", "nrf52840-dk,nucleo-l4r5zi", "--tokens", "2",
                     "--calibration", str(calibration_file), "--json")
    assert [r["platform"] for r in rows] == ["nrf52840-dk", "nucleo-l4r5zi"]


def _profile(work, **_):
    out = twin_json("profile", "--platforms", "mps2-an386", "--tokens", "2", "--db", str(work / "json.sqlite"),
                    "--workers", "1", "--json")
    assert out["cells"] == 1


def _ci(work, **_):
    (work / "twin-ci.yaml").write_text("matrix:\n  platforms: [mps2-an386]\n  tokens: 2\n")
    args = ("ci", "--config", str(work / "twin-ci.yaml"), "--baseline", str(work / "ci-base.json"),
            "--db", str(work / "ci.sqlite"), "--json")
    assert twin_json(*args, "--update-baseline")["cells"] == 1
    assert twin_json(*args)["passed"] is True


def _count(work, **_):
    import importlib.util  # the own-firmware test's tiny Arm program (tests/profile, not on sys.path here)

    spec = importlib.util.spec_from_file_location("_test_count", Path(__file__).parents[1] / "profile" / "test_count.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    _build, _words = mod._build, mod._words

    elf = _build("arm", work)
    load = _words(work, "count-n.bin", 5, 0)
    out = twin_json("count", "--elf", str(elf), "--platform", "mps2-an386", "--phase", "work",
                    "--load", f"0x20001000={load}", "--json")
    assert out["instructions"]["total"] > 0


def _recommend(work, **_):
    twin_json("profile", "--platforms", "mps2-an386", "--tokens", "2", "--db", str(work / "rec.sqlite"),
              "--workers", "1", "--json")
    out = twin_json("recommend", "--model", "builtin", "--db", str(work / "rec.sqlite"), "--json")
    assert out["recommended"] and all(r["reason"] for r in out["rejected"])


CASES = {"platforms": _platforms, "build": _build, "image": _image, "fit": _fit, "quantize": _quantize,
         "run": _run, "demo": _demo, "bench": _bench, "calibrate": _calibrate, "predict": _predict,
         "compare": _compare, "profile": _profile, "ci": _ci, "count": _count, "recommend": _recommend}
NEEDS = {"image": ("image",), "fit": ("image",), "bench": ("bench_csv",), "calibrate": ("calibration_file",),
         "predict": ("calibration_file",), "compare": ("calibration_file",)}


@pytest.mark.qemu
@pytest.mark.parametrize("verb", sorted(CASES))
def test_json_output_is_strict(verb, work, request):
    CASES[verb](work, **{name: request.getfixturevalue(name) for name in NEEDS.get(verb, ())})
