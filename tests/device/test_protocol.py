"""Tests of twin/device/protocol.py (framing, messages) and twin/device/transport.py (Device over sockets)."""

from __future__ import annotations

import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.device.protocol import (
    MAX_BODY,
    MAX_ENCODED,
    PROTO_VERSION,
    SEQ_NONE,
    Bye,
    DeviceError,
    ErrorCode,
    ErrorReply,
    Exit,
    Frame,
    FrameDecoder,
    FrameError,
    Hello,
    Info,
    Mem,
    MemInfo,
    Phase,
    ProtocolError,
    Result,
    RunRequest,
    Selftest,
    SelftestDone,
    cobs_decode,
    cobs_encode,
    decode_frame,
    decode_message,
    describe_error,
    encode_frame,
)
from twin.device.transport import Device, DeviceGone, DeviceTimeout

types = st.integers(0, 0xFF)
seqs = st.integers(0, 0xFFFF)
bodies = st.binary(max_size=MAX_BODY)
# bodies with long runs of zero / non-zero bytes, to hit the 254-byte COBS block boundaries
block_bodies = st.builds(lambda n, z, tail: b"\x01" * n + b"\x00" * z + tail,
                         st.integers(0, 600), st.integers(0, 3), st.binary(max_size=8)).filter(
    lambda b: len(b) <= MAX_BODY)
any_body = st.one_of(bodies, block_bodies)


def frames_of(data: bytes) -> list[Frame | FrameError]:
    return FrameDecoder().feed(data)


# --------------------------------------------------------------------------- COBS and framing


@given(st.binary(max_size=2000))
def test_cobs_round_trip(data: bytes) -> None:
    enc = cobs_encode(data)
    assert 0 not in enc
    assert len(enc) <= len(data) + len(data) // 254 + 1
    assert cobs_decode(enc) == data


def test_cobs_known_vectors() -> None:
    assert cobs_encode(b"") == b"\x01"
    assert cobs_encode(b"\x00") == b"\x01\x01"
    assert cobs_encode(b"\x11\x22\x00\x33") == b"\x03\x11\x22\x02\x33"
    block = bytes(range(1, 255))
    assert cobs_encode(block) == b"\xff" + block  # canonical: no trailing empty block
    assert cobs_encode(block + b"\x00") == b"\xff" + block + b"\x01\x01"
    assert cobs_encode(block + b"\x05") == b"\xff" + block + b"\x02\x05"


def test_frame_known_bytes() -> None:
    payload = b"\x01\x05\x00"
    expected = cobs_encode(payload + struct.pack("<I", zlib.crc32(payload))) + b"\x00"
    assert encode_frame(1, 5) == expected


@given(types, seqs, any_body)
def test_frame_round_trip(type_: int, seq: int, body: bytes) -> None:
    data = encode_frame(type_, seq, body)
    assert data.count(0) == 1 and data.endswith(b"\x00")
    assert len(data) <= MAX_ENCODED + 1
    assert frames_of(data) == [Frame(type_, seq, body)]


@given(st.lists(st.tuples(types, seqs, bodies), max_size=5), st.integers(1, 64))
def test_stream_of_frames_in_arbitrary_chunks(frames: list, chunk: int) -> None:
    data = b"".join(b"\x00" + encode_frame(*f) for f in frames)
    dec = FrameDecoder()
    out: list = []
    for i in range(0, len(data), chunk):
        out += dec.feed(data[i : i + chunk])
    assert out == [Frame(*f) for f in frames]
    assert dec.pending == 0


def test_body_too_long_is_refused() -> None:
    with pytest.raises(ValueError, match="longer than the maximum"):
        encode_frame(1, 1, bytes(MAX_BODY + 1))


# Corruption properties. CRC-32 detects every error burst up to 32 bits, but a changed COBS code
# byte moves a zero and re-parses the rest of the frame, so detection is then only
# probabilistic (a random frame passes the CRC with probability 2**-32). Each example below can
# fail spuriously with at most that probability; the assertions are "no frame accepted".


@given(types, seqs, any_body, st.data())
def test_any_single_corrupted_byte_is_detected(type_: int, seq: int, body: bytes, data: st.DataObject) -> None:
    enc = bytearray(encode_frame(type_, seq, body))
    pos = data.draw(st.integers(0, len(enc) - 2), label="position")  # not the delimiter
    new = data.draw(st.integers(0, 0xFF).filter(lambda b: b != enc[pos]), label="new byte")
    enc[pos] = new
    results = frames_of(bytes(enc))
    # a 0x00 splits the frame in two pieces: each must be rejected (empty pieces are skipped)
    assert results, "the corrupted frame vanished without an error"
    assert all(isinstance(r, FrameError) for r in results), results


@given(types, seqs, any_body, st.data())
def test_corrupted_delimiter_merges_frames_and_is_detected(type_: int, seq: int, body: bytes,
                                                           data: st.DataObject) -> None:
    enc = bytearray(encode_frame(type_, seq, body))
    enc[-1] = data.draw(st.integers(1, 0xFF))
    results = frames_of(bytes(enc) + encode_frame(2, 7, b"next"))
    assert len(results) == 1 and isinstance(results[0], FrameError)


@given(types, seqs, any_body, st.data())
def test_truncated_stream_gives_no_frame(type_: int, seq: int, body: bytes, data: st.DataObject) -> None:
    enc = encode_frame(type_, seq, body)
    cut = data.draw(st.integers(0, len(enc) - 2))  # at least one byte before the delimiter is lost
    dec = FrameDecoder()
    assert dec.feed(enc[:cut]) == []
    assert dec.pending == cut  # the caller can report "incomplete frame of N bytes"
    # ... and a delimiter after the truncated piece makes it an error, then decoding recovers
    results = dec.feed(b"\x00" + encode_frame(1, 2, b"ok"))
    assert results[-1] == Frame(1, 2, b"ok")
    assert all(isinstance(r, FrameError) for r in results[:-1]) and len(results) == (2 if cut else 1)


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=3000))
def test_random_garbage_is_rejected(garbage: bytes) -> None:
    # Every piece of random bytes between delimiters fails COBS, length or CRC checks, except with
    # probability ~2**-32 per piece (a random 32-bit CRC matching); hypothesis's example
    # database / shrinking never makes that likely, so this is a fair "never silently accepted".
    results = FrameDecoder().feed(garbage + b"\x00")
    assert all(isinstance(r, FrameError) for r in results)
    assert len(results) == sum(1 for piece in garbage.split(b"\x00") if piece)


def test_frame_error_messages() -> None:
    enc = bytearray(encode_frame(1, 1, b"hello"))
    enc[4] ^= 0x40
    (err,) = frames_of(bytes(enc))
    assert isinstance(err, FrameError) and err.reason == "crc"
    assert str(err).startswith("corrupt frame: CRC mismatch (got 0x")
    assert "expected 0x" in str(err)
    with pytest.raises(FrameError, match="bad COBS"):
        decode_frame(b"\x05\x01")
    with pytest.raises(FrameError, match="only 3 bytes"):
        decode_frame(cobs_encode(b"\x01\x02\x03"))
    long_run = FrameDecoder()
    assert long_run.feed(b"\x01" * (MAX_ENCODED * 3)) == []
    (err,) = long_run.feed(b"\x00")
    assert err.reason == "oversize" and len(err.raw) == MAX_ENCODED
    (text,) = frames_of(b"Booting twin firmware v1\r\n\x00")
    assert isinstance(text, FrameError) and text.is_text


# --------------------------------------------------------------------------- messages

u16, u32 = st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)
f32 = st.floats(width=32, allow_nan=False)
name24 = st.text(st.characters(min_codepoint=1, max_codepoint=126), max_size=24)
name16 = st.text(st.characters(min_codepoint=1, max_codepoint=126), max_size=16)

messages = st.one_of(
    st.just(Hello()), st.just(Mem()), st.just(Bye()),
    st.builds(Info, u16, u16, u32, u32, u32, u32, name24, name16, name24, name16),
    st.builds(RunRequest, st.lists(u16, max_size=(MAX_BODY - 16) // 2).map(tuple), u16, u32, f32, f32),
    st.builds(Phase, st.integers(0, 0xFF), u16, u16, u32, u32),
    st.builds(Result, u16, u16, u16, u32, u32),
    st.builds(MemInfo, u32, u32, u32, u32, u32, u32, u32, u32),
    st.builds(Selftest, u32),
    st.builds(SelftestDone, u32, u32, u32),
    st.builds(Exit, st.integers(0, 0xFF)),
    st.builds(ErrorReply, u16, u32, st.text(max_size=100)),
)


@given(messages, seqs)
def test_message_round_trip(msg, seq: int) -> None:
    (frame,) = frames_of(encode_frame(msg.TYPE, seq, msg.pack()))
    assert frame.seq == seq
    assert decode_message(frame) == msg


def test_message_sizes_match_the_spec() -> None:
    assert len(Info(1, 0, 0, 0, 0, 0, "", "", "", "").pack()) == 100
    assert len(Phase(0, 0, 0, 0, 0).pack()) == 17
    assert len(Result(0, 0, 0, 0, 0).pack()) == 14
    assert len(MemInfo(*[0] * 8).pack()) == 32
    assert len(RunRequest((1, 2), 0, 0, 0.0, 0.0).pack()) == 16 + 4


def test_bad_bodies_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match="PHASE body is 16 bytes, expected 17"):
        Phase.unpack(bytes(16))
    with pytest.raises(ProtocolError, match="RUN body"):
        RunRequest.unpack(struct.pack("<HHIff", 3, 1, 1, 0.0, 1.0) + b"\x01\x00")
    with pytest.raises(ProtocolError, match="unknown message type 0x7f"):
        decode_message(Frame(0x7F, 1, b""))


def test_error_sentences() -> None:
    for code in ErrorCode:
        assert describe_error(code)
    err = DeviceError(ErrorCode.E_CRC, request="RUN")
    assert err.code == 3
    assert "model image CRC mismatch: the image is corrupt" in str(err)
    assert "rebuild it with `twin` or reflash the model partition" in err.sentence
    assert "unknown error code 99" in str(DeviceError(99))


# --------------------------------------------------------------------------- Device over a socket

Script = Callable[["FakeLink"], None]
INFO = Info(PROTO_VERSION, 0, 25_000_000, 0x1234ABCD, 4096, 777, "mps2-an386", "cortex-m4", "test-build", "tiny")


class FakeLink:
    """The device end of a TCP connection: read host frames, write device frames."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []

    def recv(self, timeout: float = 5.0) -> Frame:
        end = time.monotonic() + timeout
        while not self.frames:
            self.conn.settimeout(max(0.01, end - time.monotonic()))
            data = self.conn.recv(4096)
            if not data:
                raise EOFError
            self.frames += [f for f in self.decoder.feed(data) if isinstance(f, Frame)]
        return self.frames.pop(0)

    def wait_closed(self, timeout: float = 5.0) -> None:
        """Stay silent until the host closes the connection."""
        self.conn.settimeout(timeout)
        while self.conn.recv(4096):
            pass

    def send(self, msg, seq: int) -> None:
        self.conn.sendall(b"\x00" + encode_frame(msg.TYPE, seq, msg.pack()))

    def raw(self, data: bytes) -> None:
        self.conn.sendall(data)


@pytest.fixture
def fake_device() -> Iterator[Callable[..., Device]]:
    """fake_device(script, **device_kw) -> Device connected to a thread running script(link)."""
    servers: list[tuple[socket.socket, threading.Thread, Device]] = []

    def start(script: Script, **kw) -> Device:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)

        def serve() -> None:
            conn, _ = server.accept()
            try:
                script(FakeLink(conn))
            except (EOFError, OSError):
                pass
            finally:
                conn.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        dev = Device.from_url(f"socket://127.0.0.1:{server.getsockname()[1]}", **kw)
        servers.append((server, thread, dev))
        return dev

    yield start
    for server, thread, dev in servers:
        dev.close()
        server.close()
        thread.join(timeout=5)


def answer_forever(link: FakeLink) -> None:
    """A well-behaved device."""
    booted = False
    while True:
        req = link.recv()
        if req.type == Hello.TYPE:
            if not booted:
                link.send(Phase(0, 0, 0, 777, 128), req.seq)
                booted = True
            link.send(INFO, req.seq)
        elif req.type == RunRequest.TYPE:
            run = RunRequest.unpack(req.body)
            link.send(Phase(1, 0, 0, 1000, 256), req.seq)
            for i in range(run.n_tokens):
                link.send(Phase(2, i, 100 + i, 50 + i, 300), req.seq)
            link.send(Result(0, run.n_tokens + 1, run.n_tokens, 5000, 300), req.seq)
        elif req.type == Mem.TYPE:
            link.send(MemInfo(1, 2, 3, 4, 5, 6, 7, 8), req.seq)
        elif req.type == Selftest.TYPE:
            n = Selftest.unpack(req.body).iterations
            link.send(Phase(3, 0, 0, 10, 20), req.seq)
            link.send(SelftestDone(n, 0xC0FFEE, 1234), req.seq)
        elif req.type == Exit.TYPE:
            link.send(Bye(), req.seq)
            return


def test_device_session(fake_device) -> None:
    dev = fake_device(answer_forever, timeout=2.0)
    with dev:
        boot, info = dev.hello()
        assert boot == [Phase(0, 0, 0, 777, 128)] and info == INFO
        assert dev.hello() == ([], INFO)
        seen: list[Phase] = []
        phases, result = dev.run([1, 2, 3], n_tokens=4, seed=7, temperature=0.5, topp=0.9, on_phase=seen.append)
        assert phases == seen and len(phases) == 5
        assert [p.token for p in phases[1:]] == [100, 101, 102, 103]
        assert result == Result(0, 5, 4, 5000, 300)
        assert dev.mem() == MemInfo(1, 2, 3, 4, 5, 6, 7, 8)
        assert dev.selftest(10) == SelftestDone(10, 0xC0FFEE, 1234)
        dev.exit(0)


def test_banner_stale_frames_and_host_frame_errors_are_skipped(fake_device) -> None:
    def script(link: FakeLink) -> None:
        req = link.recv()   # (pyserial's socket:// open discards what arrived before it: print after)
        link.raw(b"Booting twin firmware\r\n")
        link.send(INFO, (req.seq - 1) & 0xFFFF)  # stale
        link.send(ErrorReply(ErrorCode.E_FRAME, 4, "CRC mismatch"), SEQ_NONE)
        link.raw(b"debug: hello received\n")
        link.send(INFO, req.seq)
        link.recv()

    dev = fake_device(script, timeout=2.0)
    assert dev.hello() == ([], INFO)
    assert list(dev.text) == ["Booting twin firmware", "debug: hello received"]


def test_error_reply_raises_device_error(fake_device) -> None:
    def script(link: FakeLink) -> None:
        req = link.recv()
        link.send(ErrorReply(ErrorCode.E_NO_MODEL, 0, "image status 3"), req.seq)
        link.recv()

    dev = fake_device(script, timeout=2.0)
    with pytest.raises(DeviceError, match="RUN failed: E_NO_MODEL") as info:
        dev.run([1], 1)
    assert info.value.code == ErrorCode.E_NO_MODEL and info.value.device_message == "image status 3"


def test_unsolicited_fault_fails_the_request_at_once(fake_device) -> None:
    def script(link: FakeLink) -> None:
        req = link.recv()
        link.send(Phase(1, 0, 0, 1, 1), req.seq)
        link.send(ErrorReply(ErrorCode.E_FAULT, 0x0800_1234, "firmware fault (hard fault / trap)"), SEQ_NONE)
        link.wait_closed()

    dev = fake_device(script, timeout=2.0)
    with pytest.raises(DeviceError, match="RUN failed: E_FAULT: the firmware crashed") as info:
        dev.run([1], 1)
    assert info.value.detail == 0x0800_1234


def test_missing_phase_is_reported(fake_device) -> None:
    def script(link: FakeLink) -> None:
        req = link.recv()
        link.send(Phase(1, 0, 0, 1, 1), req.seq)
        link.raw(b"\x00\x05garbage\x00")  # a corrupt frame where a PHASE was
        link.send(Result(0, 2, 1, 2, 1), req.seq)
        link.recv()

    dev = fake_device(script, timeout=2.0)
    with pytest.raises(ProtocolError, match="RESULT says 2 PHASE records, received 1"):
        dev.run([1], 1)


def test_silent_device_times_out(fake_device) -> None:
    dev = fake_device(lambda link: (link.recv(), link.wait_closed()), timeout=0.3)
    start = time.monotonic()
    with pytest.raises(DeviceTimeout, match=r"no reply from the device for 0.3s after RUN — is it hung or unplugged\?"):
        dev.run([1], 1)
    assert time.monotonic() - start < 1.5


def test_truncated_reply_times_out_with_a_clear_message(fake_device) -> None:
    def script(link: FakeLink) -> None:
        req = link.recv()
        link.raw(b"\x00" + encode_frame(INFO.TYPE, req.seq, INFO.pack())[:40])
        link.wait_closed()

    dev = fake_device(script, timeout=0.3)
    with pytest.raises(DeviceTimeout, match="40 bytes of an incomplete frame"):
        dev.hello()


def test_corrupt_reply_is_named_in_the_time_out(fake_device) -> None:
    def script(link: FakeLink) -> None:
        req = link.recv()
        enc = bytearray(encode_frame(INFO.TYPE, req.seq, INFO.pack()))
        enc[10] ^= 0x01
        link.raw(b"\x00" + bytes(enc))
        link.wait_closed()

    dev = fake_device(script, timeout=0.3)
    with pytest.raises(DeviceTimeout, match=r"1 corrupt frame\(s\) received, last: CRC mismatch \(got 0x"):
        dev.hello()


def test_endless_garbage_stops_at_the_deadline(fake_device) -> None:
    def script(link: FakeLink) -> None:
        link.recv()
        end = time.monotonic() + 3
        while time.monotonic() < end:
            link.raw(b"\x01\x02\x03" * 10)
            time.sleep(0.01)

    dev = fake_device(script, timeout=0.5, deadline=0.6)
    start = time.monotonic()
    with pytest.raises(DeviceTimeout, match="no complete reply within 0.6s after MEM"):
        dev.mem()
    assert time.monotonic() - start < 1.5


def test_closed_connection_is_device_gone(fake_device) -> None:
    dev = fake_device(lambda link: link.recv(), timeout=2.0)
    start = time.monotonic()
    with pytest.raises(DeviceGone, match="connection lost while waiting for the reply to HELLO"):
        dev.hello()
    assert time.monotonic() - start < 1.5


def test_exit_accepts_a_closed_connection(fake_device) -> None:
    dev = fake_device(lambda link: link.recv(), timeout=2.0)
    dev.exit(3)


def test_unreachable_url_is_device_gone() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nobody listens there now
    with pytest.raises(DeviceGone, match="cannot open"):
        Device.from_url(f"socket://127.0.0.1:{port}", timeout=1.0)


def test_loopback_port_is_detected() -> None:
    with Device.from_url("loop://", timeout=1.0) as dev, pytest.raises(ProtocolError, match="echoes"):
        dev.hello()
