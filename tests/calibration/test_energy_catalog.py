"""Energy for every catalog board (issue 12, item 4): each board has a run-current figure from the
datasheet figures of shared/reference/platform-facts.md (Part 4), marked whole-chip / VDD-only /
core-rail and second-hand where it is, and such figures widen the energy interval; a board without a
published figure prints n/a and its note says nothing is published.  No emulator: synthetic counts."""

import re

import pytest

from calibration.energy import FIGURE_WIDENING, figure_uncertainty, power_model
from calibration.predict import TwinCounts, predict_from_counts
from twin.platforms import ROOT, all_platforms, get_platform
from twin.profile.isa import CLASSES

FACTS_FILE = ROOT.parent / "shared" / "reference" / "platform-facts.md"

# The figures entered in platforms/*.yaml, each with the text of platform-facts.md Part 4 it comes from
# (row, quoted fragment(s)) and how the platform file's power: section follows from it.
#   board: (row of Part 4, fragments of that row, run_ua_per_mhz, voltage_v, static_ma, basis, second_hand, use_case)
FIGURES = {
    # "110 mA at 480 MHz VOS0 ... CoreMark from flash, cache on, LDO, peripherals off" (DS12110 Rev 10)
    "nucleo-h743zi": ("STM32H743 rev V", ["110 mA at 480 MHz VOS0"], 110e3 / 480, None, None, "vdd", False, False),
    # "Popcorn" demo at 48 MHz DVDD 10.9 mA (RP2040 datasheet §5.7): a use case, core rail (DVDD 1.1 V)
    "rpi-pico": ("RP2040", ["at 48 MHz DVDD 10.9 mA", "DVDD 1.1 V"], 10.9e3 / 48, 1.1, None, "core", False, True),
    # "CoreMark on one core at 150 MHz: ... 38.7 mW over all rails", "3.3 V rails" (RP2350 datasheet)
    "rpi-pico2": ("RP2350", ["one core at 150 MHz", "38.7 mW over all rails", "3.3 V rails"],
                  38.7 / 3.3 / 150 * 1e3, 3.3, None, "chip", False, False),
    # "23 mA at 160 MHz CPU running", "3.3 V, whole chip" (ESP32-C3 series datasheet via the MINI-1 datasheet)
    "esp32-c3-devkit": ("ESP32-C3", ["23 mA at 160 MHz", "3.3 V, whole chip"], 23e3 / 160, 3.3, None, "chip",
                        False, False),
    # "240 MHz, peripheral clocks off: one core 51.2 mA ... 160 MHz: 39.9 / 49.6 mA", "3.3 V, whole chip":
    # the line through the two one-core points
    "esp32-s3-devkit": ("ESP32-S3", ["one core 51.2 mA", "160 MHz: 39.9", "3.3 V, whole chip"],
                        (51.2 - 39.9) / (240 - 160) * 1e3, 3.3, 51.2 - (51.2 - 39.9) / 80 * 240, "chip", False,
                        False),
    # "19.5 µA/MHz Run at 3.3 V" (STM32U585 datasheet feature list)
    "b-u585i-iot02a": ("STM32U585", ["19.5 µA/MHz Run at 3.3 V"], 19.5, 3.3, None, "vdd", False, False),
    # "≈40 mA at 168 MHz peripherals off (≈238 µA/MHz)", "second-hand"
    "stm32f4-disco": ("STM32F407", ["(≈238 µA/MHz)", "second-hand"], 238, None, None, "vdd", True, False),
    # "(≈52 µA/MHz at 3 V)", "second-hand"
    "nrf52840-dk": ("nRF52840", ["≈52 µA/MHz at 3 V", "second-hand"], 52, 3.0, None, "vdd", True, False),
}
# Boards for which Part 4 publishes nothing usable: n/a, and the note says so.
NOTHING_PUBLISHED = {
    "nucleo-f746zg": ("STM32F746", "nf"),          # only a sibling part's figure (F722): not used
    "hifive1-revb": ("FE310-G002, GD32VF103", "nf"),
    "gd32vf103": ("FE310-G002, GD32VF103", "nf"),
}


def _catalog() -> dict:
    """Real boards of the catalog: a board's clocks and memories (the emulated machines and RTL
    simulations have no MCU supply to publish a current for)."""
    return {k: p for k, p in all_platforms().items()
            if p.clocks is not None and p.memories is not None and p.twin is not None}


def _part4_rows() -> dict[str, str]:
    text = FACTS_FILE.read_text(encoding="utf-8")
    part4 = text[text.index("## Part 4"):]
    rows = {}
    for line in part4.splitlines():
        if line.startswith("| ") and not line.startswith("| MCU") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = line
    return rows


def _counts(proxy: str) -> TwinCounts:
    mix = dict.fromkeys(CLASSES, 0.0) | {"alu": 4e5, "load": 2e5, "store": 5e4, "mul": 1e5, "branch": 8e4}
    return TwinCounts(platform=proxy, model="synthetic", build_id="x", image_sha256="", prompt_tokens=4,
                      tokens=8, prefill=dict(mix), decode=dict(mix), prefill_loads_flash=None,
                      decode_loads_flash=None,
                      memory={"flash_bytes": 1, "ram_static_bytes": 1, "arena_bytes": 1, "stack_peak_bytes": 1,
                              "model_image_bytes": 1},
                      matches_reference=True, fpu=get_platform(proxy).fpu)


@pytest.mark.parametrize("pid", sorted(FIGURES))
def test_board_figures_equal_the_facts(pid):
    _row, _frags, run, volt, static, basis, second, use_case = FIGURES[pid]
    p = get_platform(pid).power
    assert p.run_ua_per_mhz == pytest.approx(run, abs=1e-3)
    assert p.voltage_v == volt
    assert (p.static_ma is None) if static is None else p.static_ma == pytest.approx(static, abs=1e-3)
    assert (p.basis, p.second_hand, p.use_case) == (basis, second, use_case)
    assert "platform-facts Part 4" in p.source or "[S" in p.source        # every figure names its source


@pytest.mark.skipif(not FACTS_FILE.exists(), reason="shared/reference/platform-facts.md not beside the repo")
def test_the_quoted_facts_are_in_part_4():
    rows = _part4_rows()
    for pid, (row, frags, *_rest) in FIGURES.items():
        line = next((v for k, v in rows.items() if k.startswith(row)), None)
        assert line is not None, (pid, row)
        for frag in frags:
            assert frag in line, (pid, frag)
    for pid, (row, cell) in NOTHING_PUBLISHED.items():
        line = rows[row]
        assert line.split("|")[2].strip().startswith(cell), pid
    # the S3's two one-core points, parsed: the line through them is the file's figure
    s3 = rows["ESP32-S3"]
    hi = float(re.search(r"240 MHz.*?one core ([\d.]+) mA", s3).group(1))
    lo = float(re.search(r"160 MHz: ([\d.]+)", s3).group(1))
    assert get_platform("esp32-s3-devkit").power.run_ua_per_mhz == pytest.approx((hi - lo) / 80 * 1e3)


def test_every_catalog_board_has_energy_or_a_note_that_nothing_is_published():
    for pid, plat in _catalog().items():
        r = predict_from_counts(plat, _counts(plat.counts_platform))
        e = r["energy_per_token_joules"]
        if plat.power is not None and plat.power.run_ua_per_mhz is not None:
            assert e["value"] > 0 and e["low"] <= e["value"] <= e["high"], pid
        else:
            assert e == {"value": None, "low": None, "high": None}, pid
            assert any("energy not predicted" in n and "no figure is published" in n for n in r["notes"]), pid
            assert "nf" in plat.power.source, pid
    for pid in NOTHING_PUBLISHED:
        assert get_platform(pid).power.run_ua_per_mhz is None


def test_second_hand_and_chip_level_figures_widen_the_interval():
    def rel(pid):
        plat = get_platform(pid)
        r = predict_from_counts(plat, _counts(plat.counts_platform))
        e, t = r["energy_per_token_joules"], r["token_seconds"]
        return (1 - e["low"] / e["value"], e["high"] / e["value"] - 1,
                1 - t["low"] / t["value"], t["high"] / t["value"] - 1, r["notes"])

    # first-hand, VDD only: the energy interval is the time's
    e_lo, e_hi, t_lo, t_hi, notes = rel("nucleo-h743zi")
    assert (e_lo, e_hi) == pytest.approx((t_lo, t_hi))
    assert not any("energy interval widened" in n for n in notes)
    # whole chip: × (1 ± 25%)
    u = FIGURE_WIDENING["chip"][0]
    for pid in ("esp32-c3-devkit", "esp32-s3-devkit", "rpi-pico2"):
        e_lo, e_hi, t_lo, t_hi, notes = rel(pid)
        assert e_lo == pytest.approx(1 - (1 - t_lo) * (1 - u)) and e_hi == pytest.approx((1 + t_hi) * (1 + u) - 1)
        assert any("energy interval widened" in n and "whole-chip" in n for n in notes), pid
    # second-hand: × (1 ± 15%)
    u = FIGURE_WIDENING["second_hand"][0]
    e_lo, e_hi, t_lo, t_hi, notes = rel("stm32f4-disco")
    assert e_hi == pytest.approx((1 + t_hi) * (1 + u) - 1)
    assert any("second-hand" in n for n in notes)
    # core rail and a use case: both factors
    lo, hi, why = figure_uncertainty(get_platform("rpi-pico").power)
    assert hi == pytest.approx((1 + FIGURE_WIDENING["core"][0]) * (1 + FIGURE_WIDENING["use_case"][0]) - 1)
    assert len(why) == 2
    e_lo, e_hi, t_lo, t_hi, notes = rel("rpi-pico")
    assert e_hi == pytest.approx((1 + t_hi) * (1 + hi) - 1)


def test_power_model_at_the_datasheet_points():
    # the model reproduces the datasheet currents at their clocks (I = V·I·... / V)
    for pid, mhz, ma in (("nucleo-h743zi", 480, 110), ("esp32-c3-devkit", 160, 23), ("esp32-s3-devkit", 240, 51.2),
                         ("esp32-s3-devkit", 160, 39.9), ("rpi-pico", 48, 10.9)):
        pm = power_model(get_platform(pid))
        assert pm.watts(mhz * 1e6) / pm.voltage_v == pytest.approx(ma * 1e-3, rel=1e-4), pid
    assert power_model(get_platform("rpi-pico2")).watts(150e6) == pytest.approx(38.7e-3, rel=1e-4)


def test_power_fields_are_validated(tmp_path):
    import yaml

    from twin.platforms import PLATFORM_DIR, PlatformError, load_platform_file

    def broken(pid, **power):
        data = yaml.safe_load((PLATFORM_DIR / f"{pid}.yaml").read_text())
        data["power"].update(power)
        path = tmp_path / f"{pid}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    with pytest.raises(PlatformError, match=r"power: field 'basis' must be one of vdd, chip, core, board"):
        load_platform_file(broken("nucleo-h743zi", basis="die"))
    with pytest.raises(PlatformError, match=r"power: field 'second_hand' must be true or false"):
        load_platform_file(broken("nucleo-h743zi", second_hand="yes"))
    with pytest.raises(PlatformError, match=r"power: field 'basis' describes a run current, but"):
        load_platform_file(broken("hifive1-revb", basis="chip"))
