import shutil
from pathlib import Path

import pytest
import yaml

from twin.device.build import memory_script
from twin.platforms import PLATFORM_DIR, PlatformError, all_platforms, get_platform, load_platform_file

SPINE = ["mps2-an386", "mps2-an500", "mps2-an505", "riscv32-virt", "stm32f4-disco"]


def test_every_platform_file_loads():
    platforms = all_platforms()
    assert set(SPINE) <= set(platforms)
    for p in platforms.values():
        if not p.has_firmware:      # catalog-only boards (tests/test_catalog.py)
            continue
        assert p.flash.size > 0 and p.ram.size > p.stack_size
        assert (Path(__file__).parent.parent / "firmware" / "boards" / f"{p.board}.c").exists()


def test_regions_do_not_overlap():
    for p in all_platforms().values():
        regions = sorted([p.flash, p.model, p.ram], key=lambda r: r.origin)
        for a, b in zip(regions, regions[1:], strict=False):
            assert a.end <= b.origin, p.id


def test_unknown_platform_lists_valid_ones():
    with pytest.raises(PlatformError, match="valid platforms: .*mps2-an386"):
        get_platform("nonexistent-board")


@pytest.mark.parametrize("field,value,message", [
    ("clock_hz", "fast", "field 'clock_hz' must be int"),
    ("arch", "xtensa", "field 'arch' must be one of"),
    ("memory", None, "field 'memory' must be dict"),
    ("id", "other", "field 'id' is 'other' but the file name says"),
])
def test_broken_file_names_the_field(tmp_path, field, value, message):
    data = yaml.safe_load((PLATFORM_DIR / "mps2-an386.yaml").read_text())
    data[field] = value
    path = tmp_path / "mps2-an386.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PlatformError, match=message) as info:
        load_platform_file(path)
    assert str(path) in str(info.value)


def test_missing_field_and_bad_yaml(tmp_path):
    data = yaml.safe_load((PLATFORM_DIR / "riscv32-virt.yaml").read_text())
    del data["memory"]["ram"]
    path = tmp_path / "riscv32-virt.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PlatformError, match="missing field 'ram'"):
        load_platform_file(path)
    path.write_text("id: [unclosed")
    with pytest.raises(PlatformError, match="not valid YAML"):
        load_platform_file(path)


def test_memory_script_follows_the_data():
    p = get_platform("stm32f4-disco")
    script = memory_script(p)
    assert "ORIGIN = 0x8000000" in script and "ORIGIN = 0x8040000" in script
    assert f"LENGTH = {p.ram.size:#x}" in script


def test_stale_builds_are_pruned(tmp_path):
    import os

    from twin.device.build import _prune
    for i in range(5):
        p = tmp_path / f"mps2-an386-{i:012x}.elf"
        p.write_bytes(b"x")
        os.utime(p, (1000 + i, 1000 + i))
    (tmp_path / "mps2-an505-000000000000.elf").write_bytes(b"other platform")
    os.utime(tmp_path / "mps2-an386-000000000001.elf")        # just reused by another job: kept
    _prune(tmp_path, "mps2-an386-*.elf", keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mps2-an386-000000000001.elf", "mps2-an386-000000000004.elf", "mps2-an505-000000000000.elf"]


def test_a_build_in_use_by_a_parallel_job_is_not_pruned(tmp_path):
    """Within the grace period nothing goes, however many newer builds there are (a job that built or
    reused an ELF a moment ago may be running it); past it, the least recently used go."""
    import os
    import time

    from twin.device.build import _prune
    now = time.time()
    for i in range(5):
        p = tmp_path / f"mps2-an386-{i:012x}.elf"
        p.write_bytes(b"x")
        os.utime(p, (now - 60 * i, now - 60 * i))                 # 0 .. 4 minutes ago
    _prune(tmp_path, "mps2-an386-*.elf", keep=2, grace_s=150)
    assert sorted(p.name[-7:-4] for p in tmp_path.iterdir()) == ["000", "001", "002"]


def test_reusing_a_cached_build_marks_it_recently_used():
    import os

    from twin.device.build import build_firmware
    if not shutil.which("arm-none-eabi-gcc"):
        pytest.skip("arm-none-eabi-gcc not installed (scripts/setup installs it)")
    elf = build_firmware(get_platform("mps2-an386")).elf
    os.utime(elf, (1000, 1000))
    assert build_firmware(get_platform("mps2-an386")).elf == elf        # the cached build, reused
    assert elf.stat().st_mtime > 1000
