"""The real-board backend (twin/device/board.py) without a board: the platform file's `flash:` field,
the flash command line of each runner, a flash that fails, an unplugged board, a silent board
(pyserial loop:// and a socket that never answers) and a board whose HELLO names another build."""

from __future__ import annotations

import dataclasses
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
import yaml

from twin.device.board import (
    BoardError,
    BoardProcess,
    board_session,
    flash_commands,
    plan_flash,
    reset_command,
    run_on_board,
)
from twin.device.hardware import BoardUnplugged, parse_hardware_map
from twin.device.protocol import (
    PROTO_VERSION,
    Boot,
    Bye,
    Exit,
    Frame,
    FrameDecoder,
    Hello,
    Info,
    Phase,
    encode_frame,
)
from twin.platforms import FlashSpec, PlatformError, get_platform, parse_platform

F4 = get_platform("stm32f4-disco")
F4_FLASH = dataclasses.replace(F4, flash_with=FlashSpec(("pyocd",), "stm32f407vg",
                                                        {"openocd": "board/stm32f4discovery.cfg",
                                                         "probe-rs": "STM32F407VGTx"}))


# --------------------------------------------------------------------------- the platform file's flash: field


def _platform_data(**extra) -> dict:
    data = yaml.safe_load(F4.source.read_text())
    data.update(extra)
    return data


def test_flash_field_parses() -> None:
    p = parse_platform(_platform_data(flash={"runner": "pyocd", "target": "stm32f407vg"}), F4.source)
    assert p.flash_with == FlashSpec(("pyocd",), "stm32f407vg", {})
    p = parse_platform(_platform_data(flash={"runner": ["probe-rs", "openocd"], "target": "STM32F407VGTx",
                                             "targets": {"openocd": "board/stm32f4discovery.cfg"}}), F4.source)
    assert p.flash_with.runners == ("probe-rs", "openocd")
    assert p.flash_with.target_for("openocd") == "board/stm32f4discovery.cfg"
    assert p.flash_with.target_for("probe-rs") == "STM32F407VGTx"
    assert parse_platform(_platform_data(flash={"target": "stm32f407vg"}), F4.source).flash_with.runners == ("pyocd",)
    assert F4.flash_with is None or isinstance(F4.flash_with, FlashSpec)      # the field is optional


@pytest.mark.parametrize("flash, match", [
    ({"runner": "jlink", "target": "x"}, "runner' must be one of pyocd, openocd, probe-rs"),
    ({"runner": []}, "runner"),
    ({"runner": "pyocd"}, "missing field 'target'"),
    ({"runner": "pyocd", "target": " "}, "must name the part"),
    ({"runner": "pyocd", "target": "x", "targets": {"jlink": "y"}}, "targets"),
    ({"runner": "pyocd", "target": "x", "speed": 4}, "unknown field 'speed'"),
    ("pyocd", "field 'flash' must be dict"),
])
def test_flash_field_is_validated(flash, match) -> None:
    with pytest.raises(PlatformError, match=match):
        parse_platform(_platform_data(flash=flash), F4.source)


# --------------------------------------------------------------------------- flash command lines


def test_pyocd_commands(tmp_path: Path) -> None:
    cmds = flash_commands("pyocd", "stm32f407vg", "fw.elf", "m.twlm", 0x08040000, probe="066D")
    assert cmds == [
        ["pyocd", "load", "-t", "stm32f407vg", "-u", "066D", "--no-reset", "fw.elf"],
        ["pyocd", "load", "-t", "stm32f407vg", "-u", "066D", "--no-reset", "--format", "bin", "--base-address",
         "0x8040000", "m.twlm"],
        ["pyocd", "reset", "-t", "stm32f407vg", "-u", "066D"]]
    assert flash_commands("pyocd", "nrf52840", "fw.elf", None, 0x40000)[0] == ["pyocd", "load", "-t", "nrf52840",
                                                                            "--no-reset", "fw.elf"]


def test_openocd_commands() -> None:
    (cmd,) = flash_commands("openocd", "board/stm32f4discovery.cfg", "fw.elf", "m.twlm", 0x08040000, probe="066D")
    assert cmd == ["openocd", "-c", "adapter serial 066D", "-f", "board/stm32f4discovery.cfg",
                   "-c", "program {fw.elf} verify", "-c", "program {m.twlm} 0x8040000 verify",
                   "-c", "reset run", "-c", "shutdown"]


def test_probe_rs_commands() -> None:
    cmds = flash_commands("probe-rs", "STM32F407VGTx", "fw.elf", "m.twlm", 0x08040000, probe="0483:374b:066D")
    assert cmds == [
        ["probe-rs", "download", "--chip", "STM32F407VGTx", "--probe", "0483:374b:066D", "fw.elf"],
        ["probe-rs", "download", "--chip", "STM32F407VGTx", "--probe", "0483:374b:066D", "--binary-format", "bin",
         "--base-address", "0x8040000", "m.twlm"],
        ["probe-rs", "reset", "--chip", "STM32F407VGTx", "--probe", "0483:374b:066D"]]


def test_the_runner_is_the_first_named_one_the_machine_has() -> None:
    spec = dataclasses.replace(F4, flash_with=FlashSpec(("probe-rs", "openocd", "pyocd"), "STM32F407VGTx",
                                                        {"openocd": "board/stm32f4discovery.cfg"}))
    have = {"openocd": "/usr/bin/openocd", "pyocd": "/venv/bin/pyocd"}
    plan = plan_flash(spec, "fw.elf", "m.twlm", which=have.get)
    assert plan.runner == "openocd" and plan.target == "board/stm32f4discovery.cfg"
    assert plan.commands[0][0] == "/usr/bin/openocd"
    assert reset_command(plan, None)[-4:] == ["init", "-c", "reset run", "-c", "shutdown"][-4:]
    board = parse_hardware_map({"boards": [{"id": "b", "platform": F4.id, "serial": "/dev/x", "runner": "pyocd",
                                            "target": "stm32f407vg", "probe": "066D"}]}).boards[0]
    plan = plan_flash(spec, "fw.elf", None, board, which=have.get)          # the map's runner wins
    assert plan.runner == "pyocd" and ("-u", "066D") == plan.commands[0][4:6]
    with pytest.raises(BoardError, match="no flash runner .* probe-rs: install probe-rs.*openocd: apt-get install"):
        plan_flash(dataclasses.replace(spec, flash_with=FlashSpec(("probe-rs", "openocd"), "x")), "fw.elf", None,
                   which=lambda name: None)
    with pytest.raises(BoardError, match="names no flash target"):
        plan_flash(dataclasses.replace(F4, flash_with=None), "fw.elf", None, which=have.get)


# --------------------------------------------------------------------------- failures: flash, unplugged, silent


def _fake_runner(tmp_path: Path, status: int, output: str) -> Path:
    exe = tmp_path / "pyocd"
    exe.write_text(f"#!/bin/sh\necho '{output}' >&2\nexit {status}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def test_a_failing_flash_names_the_command_and_its_output(tmp_path: Path) -> None:
    exe = _fake_runner(tmp_path, 1, "No connected debug probes")
    port = tmp_path / "ttyACM0"
    port.touch()
    b = BoardProcess(F4_FLASH, tmp_path / "fw.elf", tmp_path / "m.twlm", port=str(port), which=lambda n: str(exe))
    with pytest.raises(BoardError, match=r"flashing failed: `.*pyocd load -t stm32f407vg --no-reset .*fw.elf` "
                                         r"exited with status 1:\nNo connected debug probes"):
        b.start()


def test_an_unplugged_board_fails_before_flashing(tmp_path: Path) -> None:
    ran = []
    board = parse_hardware_map({"boards": [{"id": "f407", "platform": F4.id, "serial": str(tmp_path / "ttyACM7")}]}).boards[0]
    b = BoardProcess(F4_FLASH, tmp_path / "fw.elf", None, board=board, which=lambda n: ran.append(n))
    started = time.monotonic()
    with pytest.raises(BoardUnplugged, match="f407: its serial port .*ttyACM7 does not exist"):
        b.start()
    assert not ran and time.monotonic() - started < 1
    with pytest.raises(BoardError, match="does not exist — is the board unplugged"):
        BoardProcess(F4_FLASH, None, None, port=str(tmp_path / "ttyUSB3"), flash=False).start()


def test_a_loopback_port_is_refused_as_no_board(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(BoardError, match="echoes what the host writes"):
        with board_session(BoardProcess(F4, None, None, port="loop://", flash=False), None, reply_timeout=1.0):
            pass
    assert time.monotonic() - started < 5


def _server(script) -> tuple[socket.socket, threading.Thread]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve() -> None:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        try:
            script(conn)
        except OSError:
            pass
        finally:
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t


def test_a_board_that_never_answers_times_out(tmp_path: Path) -> None:
    srv, t = _server(lambda conn: time.sleep(4))
    started = time.monotonic()
    port = f"socket://127.0.0.1:{srv.getsockname()[1]}"
    with pytest.raises(BoardError, match="is silent"):
        with board_session(BoardProcess(F4, None, None, port=port, flash=False), None, reply_timeout=0.5):
            pass
    assert time.monotonic() - started < 3
    srv.close()


def _firmware(info: Info):
    def script(conn: socket.socket) -> None:
        dec = FrameDecoder()
        conn.sendall(b"\x00" + encode_frame(Boot.TYPE, 0xFFFF, Boot(PROTO_VERSION).pack()))
        while True:
            data = conn.recv(4096)
            if not data:
                return
            for f in dec.feed(data):
                if not isinstance(f, Frame):
                    continue
                if f.type == Hello.TYPE:
                    for msg in (Phase(0, 0, 0, 123, 64), info):
                        conn.sendall(b"\x00" + encode_frame(msg.TYPE, f.seq, msg.pack()))
                elif f.type == Exit.TYPE:
                    conn.sendall(b"\x00" + encode_frame(Bye.TYPE, f.seq, b""))
                    return
    return script


@pytest.mark.parametrize("board, build, match", [
    ("mps2-an386", "abc", "runs firmware for 'mps2-an386', not stm32f4-disco"),
    ("stm32f4-disco", "old-build", "runs firmware build 'old-build', not the 'abc' just flashed"),
])
def test_hello_naming_another_platform_or_build_is_refused(board: str, build: str, match: str) -> None:
    info = Info(PROTO_VERSION, 0, 168_000_000, 0, 0, 0, board, "cortex-m4f", build, "tiny")
    srv, t = _server(_firmware(info))
    port = f"socket://127.0.0.1:{srv.getsockname()[1]}"
    with pytest.raises(BoardError, match=match):
        with board_session(BoardProcess(F4, None, None, port=port, flash=False), "abc", reply_timeout=2):
            pass
    srv.close()


def test_the_right_board_passes_the_check() -> None:
    info = Info(PROTO_VERSION, 0, 168_000_000, 0, 0, 0, "stm32f4-disco", "cortex-m4f", "abc", "tiny")
    srv, t = _server(_firmware(info))
    port = f"socket://127.0.0.1:{srv.getsockname()[1]}"
    with board_session(BoardProcess(F4, None, None, port=port, flash=False), "abc", reply_timeout=2) as s:
        assert s.info.build_id == "abc" and s.boot_phases[0].cycles == 123
    srv.close()
    t.join(timeout=2)


def test_run_on_board_refuses_a_board_of_another_platform() -> None:
    board = parse_hardware_map({"boards": [{"id": "pico", "platform": "rpi-pico", "serial": "/dev/x"}]}).boards[0]
    with pytest.raises(BoardError, match="board pico is a rpi-pico in the hardware map, not stm32f4-disco"):
        run_on_board(board, F4, Path("fw.elf"), "abc", None, [1], 1)


# --------------------------------------------------------------------------- --device on the CLI


def _map(tmp_path: Path, monkeypatch, port: str) -> None:
    path = tmp_path / "hardware.yaml"
    path.write_text(yaml.safe_dump({"boards": [{"id": "f407", "platform": "stm32f4-disco", "serial": port}]}))
    monkeypatch.setenv("TWIN_HARDWARE_MAP", str(path))


def test_bench_device_unplugged_is_one_clear_line(tmp_path: Path, monkeypatch) -> None:
    from click.testing import CliRunner

    from twin.cli.main import main

    _map(tmp_path, monkeypatch, str(tmp_path / "ttyACM5"))
    r = CliRunner().invoke(main, ["bench", "--device", "f407", "--platform", "stm32f4-disco", "--model", "none",
                                  "--workloads", "none", "-o", str(tmp_path / "b.csv")])
    if "not found: install" in r.output:
        pytest.skip(r.output.strip())
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "f407: its serial port" in r.output and "does not exist" in r.output
    r = CliRunner().invoke(main, ["bench", "--device", "nope", "--platform", "stm32f4-disco"])
    assert r.exit_code == 1 and "no board 'nope'; boards: f407" in r.output
    r = CliRunner().invoke(main, ["bench", "--platform", "stm32f4-disco"])
    assert r.exit_code == 1 and "--port PORT (or --emulate), or --device ID" in r.output
    r = CliRunner().invoke(main, ["bench", "--device", "f407", "--platform", "mps2-an386"])
    assert r.exit_code == 1 and "board f407 is a stm32f4-disco in the hardware map, not mps2-an386" in r.output


def test_run_device_with_no_map_says_how_to_make_one(tmp_path: Path, monkeypatch) -> None:
    from twin.cli.hardware import run_on_device
    from twin.cli.main import TwinCliError

    monkeypatch.delenv("TWIN_HARDWARE_MAP", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(TwinCliError, match="no hardware map: set TWIN_HARDWARE_MAP=FILE .*twin hardware scan"):
        run_on_device({}, "f407", None)


@pytest.mark.qemu
def test_profile_device_runs_each_cell_on_the_board_and_stores_an_unplugged_one_as_failed(tmp_path: Path,
                                                                                       monkeypatch) -> None:
    from click.testing import CliRunner

    from twin.cli.main import main
    from twin.results.store import ResultsStore

    _map(tmp_path, monkeypatch, str(tmp_path / "ttyACM7"))
    db = tmp_path / "runs.sqlite"
    r = CliRunner().invoke(main, ["profile", "--device", "f407", "--platforms", "mps2-an386", "--db", str(db)])
    assert r.exit_code == 1 and "--device f407 is a stm32f4-disco: profile it with --platforms stm32f4-disco" in r.output
    r = CliRunner().invoke(main, ["profile", "--device", "nope", "--platforms", "stm32f4-disco", "--db", str(db)])
    assert r.exit_code == 1 and "no board 'nope'; boards: f407" in r.output
    r = CliRunner().invoke(main, ["profile", "--device", "f407", "--platforms", "stm32f4-disco", "--bits", "4,8",
                                  "--tokens", "2", "--db", str(db), "--json"])
    assert r.exit_code == 1, r.output                        # both cells failed: the board is not plugged in
    with ResultsStore(db) as store:
        runs = store.runs()
    assert len(runs) == 2 and set(runs["status"]) == {"failed"}
    assert all(k.endswith("/dev-f407") for k in runs["cell_key"])
    assert all("f407: its serial port" in e and "does not exist" in e for e in runs["error"])
