"""`twin predict` / `twin compare`: the JSON contract on catalog boards, the counts cache (boards sharing
a proxy run QEMU once), calibration files cited, the chart."""

import json

import pytest
from click.testing import CliRunner

from calibration import predict as P
from calibration import store
from calibration.fit import calibrate
from calibration.synthetic import bench_dataset
from twin.cli.main import main
from twin.model import modelgen
from twin.model.image import write_image

TOKENS = "2"
INTERVAL_KEYS = ("ttft_seconds", "token_seconds", "tokens_per_second", "energy_per_token_joules")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A random-weight model image of the default shape (independent of the trained built-in)."""
    path = tmp_path_factory.mktemp("models") / "twin-test-260k.twlm"
    path.write_bytes(write_image(modelgen.generate_model(seed=7), bits=4, group_size=32))
    return str(path)


def _predict_json(*args):
    r = CliRunner().invoke(main, ["predict", *args, "--tokens", TOKENS, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def _check_contract(r: dict, platform: str):
    assert r["platform"] == platform
    for key in ("model", "clock_mhz", "calibration", "fits", "memory", *INTERVAL_KEYS):
        assert key in r, key
    for key in INTERVAL_KEYS:
        iv = r[key]
        assert set(iv) == {"value", "low", "high"}
        if iv["value"] is not None:
            assert iv["low"] <= iv["value"] <= iv["high"], key
    assert isinstance(r["fits"], bool)
    assert set(r["memory"]) == {"flash_bytes", "ram_bytes", "flash_available", "ram_available"}
    assert r["tokens_per_second"]["value"] == pytest.approx(1 / r["token_seconds"]["value"])
    assert r["ttft_seconds"]["value"] > r["token_seconds"]["value"]


@pytest.mark.qemu
def test_predict_json_contract(model_file):
    r = _predict_json("--platform", "nucleo-f746zg", "--model", model_file)
    _check_contract(r, "nucleo-f746zg")
    assert r["calibration"] == "prior" and r["clock_mhz"] == 216
    assert r["twin"] == {"mode": "proxy", "proxy": "mps2-an500", "confidence": "medium", "cross_core": False,
                         "kernels": "arm_dsp"}
    assert r["energy_per_token_joules"]["value"] is None          # no power figure for the F746: n/a, said so
    assert any("energy not predicted" in n for n in r["notes"])
    assert r["counts"]["matches_reference"] is True
    # where the cycles go: one term per feature of the cycle model, adding up to the token's cycles;
    # the F746 at 216 MHz has flash wait states, so fetch and flash loads cost something
    terms = r["cycles"]["per_token_terms"]
    assert set(terms) >= {"n_alu", "n_load", "fetch_wait", "flash_load_wait", "branches_taken"}
    assert sum(terms.values()) == pytest.approx(r["cycles"]["per_token"], rel=1e-12)
    assert terms["fetch_wait"] > 0 and terms["flash_load_wait"] > 0 and min(terms.values()) >= 0

    pico = _predict_json("--platform", "rpi-pico", "--model", model_file)
    _check_contract(pico, "rpi-pico")
    # the M0+ counts its own ARMv6-M build (on the M4 machine), timed with the M0+ table
    assert pico["twin"]["mode"] == "isa-proxy" and pico["twin"]["cross_core"] is False
    assert pico["counts"]["platform"] == "rpi-pico" and pico["twin"]["kernels"] == "scalar"
    assert not any("cross-core" in n for n in pico["notes"])
    s3 = _predict_json("--platform", "esp32-s3-devkit", "--model", model_file)   # across cores: soft-float calls
    assert sum(s3["cycles"]["per_token_terms"].values()) == pytest.approx(s3["cycles"]["per_token"], rel=1e-12)

    l4 = _predict_json("--platform", "nucleo-l4r5zi", "--model", model_file, "--clock", "60")
    l4_fast = _predict_json("--platform", "nucleo-l4r5zi", "--model", model_file)
    assert l4["clock_mhz"] == 60 and l4["token_seconds"]["value"] > l4_fast["token_seconds"]["value"]
    assert l4["energy_per_token_joules"]["value"] > 0
    low_v = _predict_json("--platform", "nucleo-l4r5zi", "--model", model_file, "--voltage", "1.8")
    assert low_v["energy_per_token_joules"]["value"] < l4_fast["energy_per_token_joules"]["value"]


@pytest.mark.qemu
def test_boards_sharing_a_proxy_run_the_emulator_once(model_file):
    P._MEMO.clear()
    before = dict(P.STATS)
    results = P.compare(["nrf52840-dk", "nucleo-l4r5zi", "esp32-s3-devkit"], model=model_file,
                        tokens=int(TOKENS))
    # all three count on mps2-an386: the two DSP cores on its arm_dsp build, the Xtensa (no Arm DSP)
    # on its portable (scalar) build — one run each at most
    assert P.STATS["runs"] - before["runs"] <= 2
    assert P.STATS["cache_hits"] - before["cache_hits"] >= 1
    assert len({r["counts"]["build_id"] for r in results}) == 2
    assert [r["twin"]["kernels"] for r in results] == ["arm_dsp", "arm_dsp", "scalar"]


@pytest.mark.qemu
def test_progress_is_reported_only_for_emulator_runs(model_file, tmp_path, monkeypatch):
    monkeypatch.setattr(P, "_counts_cache_dir", lambda: tmp_path)     # cold: nothing counted yet
    monkeypatch.setattr(P, "_MEMO", {})
    runs: list[str] = []
    P.compare(["nrf52840-dk", "nucleo-l4r5zi"], model=model_file, tokens=int(TOKENS), on_run=runs.append)
    assert runs == ["mps2-an386"]                                      # one run, for both M4F boards
    P._MEMO.clear()                                                     # the disk cache alone
    P.predict("nrf52840-dk", model=model_file, tokens=int(TOKENS), on_run=runs.append)
    assert runs == ["mps2-an386"]


@pytest.mark.qemu
def test_prediction_cites_its_calibration(model_file, tmp_path):
    cal = calibrate(bench_dataset(n_workloads=12))
    path = store.save(cal, tmp_path / "m4.json")
    r = _predict_json("--platform", "nrf52840-dk", "--model", model_file, "--calibration", str(path))
    assert r["calibration"] == cal.id
    q = cal.cycles.q
    # q, widened (and said so) where the token's terms go past the synthetic suite's (its SIMD share)
    half = r["token_seconds"]["high"] / r["token_seconds"]["value"] - 1
    widened = [n for n in r["notes"] if n.startswith("interval widened by")]
    assert half >= q - 1e-9 and (half > q + 1e-6) == bool(widened), (half, q, widened)
    bad = CliRunner().invoke(main, ["predict", "--platform", "nucleo-h743zi", "--model", model_file,
                                    "--tokens", TOKENS, "--calibration", str(path)])
    assert bad.exit_code != 0 and "is for core cortex-m4f" in bad.output
    r = CliRunner().invoke(main, ["compare", "--platforms", "nrf52840-dk,rpi-pico2", "--model", model_file,
                                  "--tokens", TOKENS, "--calibration", str(path)])
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line.split()[2] for line in r.output.splitlines()[1:3]}
    assert rows == {"nrf52840-dk": "linear", "rpi-pico2": "prior"}      # the M4 file applies to the M4 board
    assert f"calibration files: {cal.id}" in r.output


@pytest.mark.qemu
def test_compare_writes_a_chart(model_file, tmp_path):
    out = tmp_path / "chart.png"
    r = CliRunner().invoke(main, ["compare", "--platforms", "nrf52840-dk,rpi-pico,hifive1-revb,esp32-s3-devkit",
                                  "--model", model_file, "--tokens", TOKENS, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "hifive1-revb" in r.output and "NO" in r.output            # 16 KB DTIM: does not fit
    assert "cross-core" in r.output


def test_unknown_platform_and_bad_clock_fail_in_one_line():
    r = CliRunner().invoke(main, ["predict", "--platform", "nucleo-x999"])
    assert r.exit_code != 0 and "valid platforms:" in r.output and "rpi-pico2" in r.output
    r = CliRunner().invoke(main, ["predict", "--platform", "nrf52840-dk", "--clock", "500"])
    assert r.exit_code != 0 and "outside 0..64 MHz" in r.output
    assert len(r.output.strip().splitlines()) == 1


@pytest.mark.qemu
def test_a_core_without_dsp_is_counted_with_the_portable_kernels(model_file):
    """The M4F proxy builds arm_dsp kernels; an Xtensa core (esp32-s3) predicted from it must not be
    credited with SMLAD: its counts come from the proxy built with the portable (scalar) kernels."""
    m4 = P.predict("nrf52840-dk", model=model_file, tokens=int(TOKENS))
    m0 = P.predict("esp32-s3-devkit", model=model_file, tokens=int(TOKENS))
    assert (m4["twin"]["kernels"], m0["twin"]["kernels"]) == ("arm_dsp", "scalar")
    assert m4["counts"]["platform"] == m0["counts"]["platform"] == "mps2-an386"
    assert m4["counts"]["build_id"] != m0["counts"]["build_id"]
    ref_counts = P.twin_counts("mps2-an386", model=model_file, tokens=int(TOKENS), kernels="ref")
    dsp_counts = P.twin_counts("mps2-an386", model=model_file, tokens=int(TOKENS))
    assert sum(ref_counts.decode.values()) > 1.5 * sum(dsp_counts.decode.values())
    assert ref_counts.decode["simd"] == 0 < dsp_counts.decode["simd"]
    scalar_counts = P.twin_counts("mps2-an386", model=model_file, tokens=int(TOKENS), kernels="scalar")
    assert scalar_counts.decode["simd"] == 0 and sum(scalar_counts.decode.values()) < sum(ref_counts.decode.values())
