"""The hardware map (twin/device/hardware.py): parsing, matching a board to its serial port (two boards
of one kind, a missing port), and `twin hardware scan`'s proposal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from twin.device.hardware import (
    BoardUnplugged,
    HardwareMapError,
    load_hardware_map,
    parse_hardware_map,
    propose_map,
    resolve_port,
)


@dataclass
class Port:                     # what serial.tools.list_ports gives, the fields we read
    device: str
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    description: str = ""
    manufacturer: str | None = None


TWO_F407 = {"boards": [
    {"id": "f407-left", "platform": "stm32f4-disco", "usb": {"vid": 0x0483, "pid": 0x374B, "serial_number": "AAA1"},
     "probe": "AAA1", "notes": "left"},
    {"id": "f407-right", "platform": "stm32f4-disco", "usb": {"vid": "0483", "pid": "374b", "serial_number": "BBB2"},
     "probe": "BBB2", "runner": "openocd", "target": "board/stm32f4discovery.cfg"},
]}
PORTS = [Port("/dev/ttyACM1", 0x0483, 0x374B, "BBB2", "STLink VCP"), Port("/dev/ttyACM0", 0x0483, 0x374B, "AAA1"),
         Port("/dev/ttyS0")]


def test_two_boards_of_one_kind_are_told_apart_by_serial_number() -> None:
    hw = parse_hardware_map(TWO_F407)
    left, right = hw.get("f407-left"), hw.get("f407-right")
    assert left.usb.vid == right.usb.vid == 0x0483 and left.usb.pid == right.usb.pid == 0x374B
    assert resolve_port(left, PORTS) == "/dev/ttyACM0"
    assert resolve_port(right, PORTS) == "/dev/ttyACM1"
    assert (right.runner, right.target, left.probe, left.notes) == ("openocd", "board/stm32f4discovery.cfg", "AAA1", "left")


def test_a_map_that_cannot_tell_two_boards_apart_is_refused() -> None:
    same = {"boards": [{"id": "a", "platform": "stm32f4-disco", "usb": {"vid": 0x0483, "pid": 0x374B}},
                       {"id": "b", "platform": "stm32f4-disco", "usb": {"vid": 0x0483, "pid": 0x374B}}]}
    with pytest.raises(HardwareMapError, match="same USB identity.*serial_number"):
        parse_hardware_map(same)
    dup_port = {"boards": [{"id": "a", "platform": "x", "serial": "/dev/ttyACM0"},
                           {"id": "b", "platform": "x", "serial": "/dev/ttyACM0"}]}
    with pytest.raises(HardwareMapError, match="same serial port"):
        parse_hardware_map(dup_port)


def test_ambiguous_ports_are_refused_not_guessed() -> None:
    board = parse_hardware_map({"boards": [{"id": "a", "platform": "p", "usb": {"vid": 0x0483, "pid": 0x374B}}]}).boards[0]
    with pytest.raises(HardwareMapError, match="2 ports have USB id 0483:374b.*serial_number"):
        resolve_port(board, PORTS)


def test_missing_port_is_unplugged(tmp_path: Path) -> None:
    hw = parse_hardware_map({"boards": [{"id": "gone", "platform": "stm32f4-disco", "serial": str(tmp_path / "ttyACM9")},
                                        *TWO_F407["boards"]]})
    with pytest.raises(BoardUnplugged, match="gone: its serial port .*ttyACM9 does not exist — is it unplugged"):
        resolve_port(hw.get("gone"), PORTS)
    with pytest.raises(BoardUnplugged, match="no serial port has USB id 0483:374b serial AAA1"):
        resolve_port(hw.get("f407-left"), [PORTS[0]])
    present = tmp_path / "ttyACM3"
    present.touch()
    assert resolve_port(parse_hardware_map({"boards": [{"id": "x", "platform": "p", "serial": str(present)}]}).boards[0]) \
        == str(present)


@pytest.mark.parametrize("bad, match", [
    ({}, "'boards' list"),
    ({"boards": [{"platform": "p", "serial": "/dev/x"}]}, "'id' must be"),
    ({"boards": [{"id": "a", "platform": "p"}]}, "give 'serial'"),
    ({"boards": [{"id": "a", "platform": "p", "serial": "/dev/x", "runner": "jlink"}]}, "runner"),
    ({"boards": [{"id": "a", "platform": "p", "usb": {"vid": 1}}]}, "vid and pid"),
    ({"boards": [{"id": "a", "platform": "p", "serial": "/dev/x", "colour": "red"}]}, "unknown field 'colour'"),
    ({"boards": [{"id": "a", "platform": "p", "serial": "/dev/x"}, {"id": "a", "platform": "p", "serial": "/dev/y"}]},
     "used twice"),
])
def test_broken_maps_name_the_field(bad, match) -> None:
    with pytest.raises(HardwareMapError, match=match):
        parse_hardware_map(bad, Path("hw.yaml"))


def test_map_file_and_unknown_board(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "hardware.yaml"
    path.write_text(yaml.safe_dump(TWO_F407))
    monkeypatch.setenv("TWIN_HARDWARE_MAP", str(path))
    hw = load_hardware_map()
    assert [b.id for b in hw.boards] == ["f407-left", "f407-right"]
    with pytest.raises(HardwareMapError, match="no board 'nope'; boards: f407-left, f407-right"):
        hw.get("nope")
    monkeypatch.setenv("TWIN_HARDWARE_MAP", str(tmp_path / "missing.yaml"))
    with pytest.raises(HardwareMapError, match="cannot read the hardware map"):
        load_hardware_map()


def test_scan_proposal_parses_and_pairs_probes_with_their_ports() -> None:
    probes = [{"unique_id": "AAA1", "description": "STM32 STLink"}, {"unique_id": "ZZZ9", "description": "J-Link"}]
    text = propose_map(PORTS, probes, probe_note=None)
    hw = parse_hardware_map(yaml.safe_load(text))
    assert [(b.serial, b.usb.serial_number, b.probe, b.platform) for b in hw.boards] == [
        ("/dev/ttyACM0", "AAA1", "AAA1", "stm32f4-disco"), ("/dev/ttyACM1", "BBB2", None, "stm32f4-disco")]
    assert "probe ZZZ9" in text                      # a probe without a port of its own is named
    assert "boards: []" in propose_map([Port("/dev/ttyS0")], [], "pyOCD not installed")


def test_scan_cli_writes_a_proposal(tmp_path: Path, monkeypatch) -> None:
    from click.testing import CliRunner

    from twin.cli.main import main
    from twin.device import hardware

    monkeypatch.setattr(hardware, "list_ports", lambda: PORTS)
    monkeypatch.setattr(hardware, "list_probes", lambda: ([], "pyOCD not installed"))
    out = tmp_path / "hw.yaml"
    r = CliRunner().invoke(main, ["hardware", "scan", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert len(parse_hardware_map(yaml.safe_load(out.read_text())).boards) == 2
