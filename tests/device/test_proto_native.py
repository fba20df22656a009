"""firmware/app/proto.c compiled natively: frames must round-trip bit-exactly with twin/device/protocol.py.

tests/native/proto_host.c is an echo device on stdin/stdout: a valid frame comes back as
type | 0x80 with the same seq and body; a corrupt frame gives ERROR E_FRAME with seq 0xFFFF.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twin.device.protocol import (
    MAX_BODY,
    SEQ_NONE,
    ErrorCode,
    ErrorReply,
    Frame,
    FrameDecoder,
    cobs_encode,
    encode_frame,
)
from twin.platforms import ROOT  # the repository

APP = ROOT / "firmware" / "app"
RUNTIME = ROOT / "firmware" / "runtime"
SOURCES = [APP / "proto.c", RUNTIME / "crc32.c", ROOT / "tests" / "native" / "proto_host.c"]
CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Wconversion", "-Werror", "-fsanitize=address,undefined",
          "-fno-sanitize-recover=all"]

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a host gcc")


class EchoDevice:
    """The compiled echo driver as a subprocess, with time-bounded reads."""

    def __init__(self, exe: Path) -> None:
        self.proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.decoder = FrameDecoder()

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read_exactly(self, n: int, timeout: float = 5.0) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        out = b""
        while len(out) < n:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                raise TimeoutError(f"echo device sent {len(out)} of {n} bytes: {out!r}")
            chunk = os.read(fd, n - len(out))
            if not chunk:
                raise EOFError(f"echo device exited (code {self.proc.poll()}) after {out!r}")
            out += chunk
        return out

    def read_frame(self, timeout: float = 5.0) -> Frame:
        """Read up to the next complete frame (the device sends 0x00 before every frame)."""
        while True:
            for item in self.decoder.feed(self.read_exactly(1, timeout)):
                assert isinstance(item, Frame), item
                return item

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=5)


@pytest.fixture(scope="module")
def echo_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("native") / "proto_host"
    cmd = ["gcc", *CFLAGS, "-I", str(APP), "-I", str(RUNTIME), *map(str, SOURCES), "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    if build.returncode != 0 and "sanitize" in build.stderr:  # no sanitizer runtime: build without
        cmd = [c for c in cmd if "sanitize" not in c]
        build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    return exe


@pytest.fixture(scope="module")
def echo(echo_exe: Path) -> Iterator[EchoDevice]:
    dev = EchoDevice(echo_exe)
    yield dev
    assert dev.close() == 0


def test_proto_c_is_freestanding() -> None:
    """proto.c / crc32.c include only the freestanding headers (and the project's own)."""
    for src in (APP / "proto.c", RUNTIME / "crc32.c", APP / "proto.h", RUNTIME / "crc32.h"):
        for line in src.read_text().splitlines():
            if line.startswith("#include <"):
                assert line in ("#include <stdint.h>", "#include <stddef.h>"), f"{src.name}: {line}"


def test_empty_frames_are_ignored(echo: EchoDevice) -> None:
    echo.send(b"\x00\x00\x00" + encode_frame(1, 9, b""))
    assert echo.read_exactly(1) == b"\x00"
    assert echo.read_exactly(len(encode_frame(0x81, 9, b""))) == encode_frame(0x81, 9, b"")


body_strategy = st.one_of(
    st.binary(max_size=MAX_BODY),
    st.builds(lambda n, tail: (b"\x07" * n + tail)[:MAX_BODY], st.integers(0, 1100), st.binary(max_size=4)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 0xFF), st.integers(0, 0xFFFF), body_strategy)
def test_round_trip_bit_exact(echo: EchoDevice, type_: int, seq: int, body: bytes) -> None:
    echo.send(b"\x00" + encode_frame(type_, seq, body))
    expected = b"\x00" + encode_frame(type_ | 0x80, seq, body)
    assert echo.read_exactly(len(expected)) == expected


def _expect_frame_error(echo: EchoDevice, reason: str) -> None:
    frame = echo.read_frame()
    assert (frame.type, frame.seq) == (ErrorReply.TYPE, SEQ_NONE)
    err = ErrorReply.unpack(frame.body)
    assert err.code == ErrorCode.E_FRAME and reason in err.message, err


def test_corrupt_frames_give_e_frame_and_recovery(echo: EchoDevice) -> None:
    good = encode_frame(0x02, 77, b"after")
    cases = {
        "CRC mismatch": bytes([encode_frame(1, 1, b"x")[0]]) + b"\x55" + encode_frame(1, 1, b"x")[2:],
        "bad COBS": b"\x09\x01\x02\x00",  # the block claims 8 bytes, 2 arrive
        "too short": cobs_encode(b"\x01\x02\x03") + b"\x00",
        "too long": cobs_encode(bytes(range(1, 256)) * 5) + b"\x00",
    }
    for reason, bad in cases.items():
        echo.send(bad + good)
        _expect_frame_error(echo, reason)
        assert echo.read_frame() == Frame(0x82, 77, b"after")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_single_corrupted_byte_then_recovery(echo: EchoDevice, data: st.DataObject) -> None:
    body = data.draw(st.binary(max_size=300))
    enc = bytearray(encode_frame(0x03, 5, body))
    pos = data.draw(st.integers(0, len(enc) - 2))
    enc[pos] = data.draw(st.integers(1, 0xFF).filter(lambda b: b != enc[pos]))  # 0x00 splits: see below
    echo.send(bytes(enc) + encode_frame(0x04, 6, b"next"))
    _expect_frame_error(echo, "")
    assert echo.read_frame() == Frame(0x84, 6, b"next")


def test_zero_inserted_splits_into_two_rejected_pieces(echo: EchoDevice) -> None:
    enc = bytearray(encode_frame(0x03, 5, bytes(range(1, 60))))
    enc[20] = 0
    echo.send(bytes(enc) + encode_frame(0x04, 6, b"next"))
    _expect_frame_error(echo, "")
    _expect_frame_error(echo, "")
    assert echo.read_frame() == Frame(0x84, 6, b"next")


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=3000))
def test_garbage_then_recovery(echo: EchoDevice, garbage: bytes) -> None:
    # Every non-empty piece of garbage gets an E_FRAME (random pieces pass the CRC with p ~ 2**-32).
    echo.send(garbage + b"\x00" + encode_frame(0x05, 0x1234, b"ok"))
    for _ in range(sum(1 for piece in garbage.split(b"\x00") if piece)):
        _expect_frame_error(echo, "")
    assert echo.read_frame() == Frame(0x85, 0x1234, b"ok")


@pytest.mark.parametrize("cc,flags", [
    ("arm-none-eabi-gcc", ["-mcpu=cortex-m3", "-mthumb"]),
    ("riscv64-unknown-elf-gcc", ["-march=rv32imac", "-mabi=ilp32"]),
])
def test_cross_compiles_freestanding(tmp_path: Path, cc: str, flags: list[str]) -> None:
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} not installed")
    for src in (APP / "proto.c", RUNTIME / "crc32.c"):
        cmd = [cc, *flags, "-std=c11", "-Os", "-ffreestanding", "-Wall", "-Wextra", "-Wconversion", "-Werror",
               f"-I{RUNTIME}", "-c", str(src), "-o", str(tmp_path / (src.name + ".o"))]
        build = subprocess.run(cmd, capture_output=True, text=True)
        assert build.returncode == 0, build.stderr
