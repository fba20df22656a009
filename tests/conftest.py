import shutil
import sys
from pathlib import Path

import pytest

# The suite mirrors the packages (tests/model, tests/device, ...); tests/ itself holds the shared helpers
# (fixtures/, native/), importable from every subdirectory. The repository root goes before it, so that
# `calibration` is the package and not the namespace of tests/calibration (`pytest` run without `python -m`).
sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]


def _missing_emulator_tools() -> str | None:
    for tool, package in [("qemu-system-arm", "qemu-system-arm"), ("qemu-system-riscv32", "qemu-system-misc"),
                          ("arm-none-eabi-gcc", "gcc-arm-none-eabi"),
                          ("riscv64-unknown-elf-gcc", "gcc-riscv64-unknown-elf")]:
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian package {package}; run scripts/setup)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _missing_emulator_tools()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "qemu" in item.keywords:
            item.add_marker(skip)
