"""Client for the device protocol over any pyserial port (docs/protocol.md).

    with Device.from_url("socket://127.0.0.1:4321", timeout=10) as dev:
        boot_phases, info = dev.hello()
        phases, result = dev.run([1, 2, 3], n_tokens=8, seed=1, temperature=0.0, topp=1.0)

Every request gets a fresh sequence number; replies with another seq are stale and skipped (with a
debug log). Each request is bounded by two time-outs: ``timeout`` (no byte at all for that long:
DeviceTimeout) and ``deadline`` (the whole request took that long: DeviceTimeout). A closed socket
or an unplugged port gives DeviceGone; an ERROR reply gives protocol.DeviceError. Text printed by
the firmware outside frames (a boot banner) is logged and kept in ``Device.text``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

import serial

from twin.device.protocol import (
    MAX_BODY,
    PROTO_VERSION,
    SEQ_NONE,
    Boot,
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
    Message,
    MsgType,
    Phase,
    ProtocolError,
    Result,
    RunRequest,
    Selftest,
    SelftestDone,
    WorkloadDone,
    WorkloadRequest,
    decode_message,
    encode_frame,
    type_name,
)

log = logging.getLogger("twin.device.transport")

# Our URL handlers first (twin/device/urlhandler: socket:// without pyserial's 0.3 s close pause),
# pyserial's for every other scheme.
if "twin.device.urlhandler" not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.insert(0, "twin.device.urlhandler")

POLL_INTERVAL = 0.05  # seconds a single port.read() may block
TEXT_LINES_KEPT = 200


class TransportError(Exception):
    """The link to the device failed (base class of DeviceTimeout and DeviceGone)."""


class DeviceTimeout(TransportError):
    """The device did not answer in time."""


class DeviceGone(TransportError):
    """The port was closed: socket disconnected, emulator exited or board unplugged."""


class DeviceRestarted(DeviceGone):
    """The device announced BOOT while a request was pending: it reset."""


class _Wait:
    """What happened while waiting for the replies to one request (for error messages)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.frames = 0
        self.last_type = ""
        self.corrupt: list[FrameError] = []
        self.host_frames_rejected = 0
        self.text: list[str] = []

    def context(self, pending: int) -> str:
        notes = []
        if pending:
            notes.append(f"received {pending} bytes of an incomplete frame (no 0x00 delimiter): "
                         "the reply was truncated")
        if self.corrupt:
            notes.append(f"{len(self.corrupt)} corrupt frame(s) received, last: {self.corrupt[-1].detail} — "
                         "check the baud rate and the link")
        if self.host_frames_rejected:
            notes.append(f"the device rejected {self.host_frames_rejected} corrupt frame(s) from the host "
                         "(E_FRAME) — the request may have been damaged on the way")
        if self.text:
            notes.append(f"the device printed: {self.text[-1]!r}")
        return "".join(f"; {n}" for n in notes)


class Device:
    """A device (emulated or real) speaking the framed protocol over a pyserial port."""

    def __init__(self, port: Any, *, timeout: float = 30.0, deadline: float = 600.0,
                 name: str | None = None) -> None:
        """``port``: an open pyserial object. ``timeout``: inactivity time-out in seconds;
        ``deadline``: default overall time limit of one request (methods can override it)."""
        self.port = port
        self.timeout = timeout
        self.deadline = deadline
        self.name = name or str(getattr(port, "port", None) or "device")
        self.text: deque[str] = deque(maxlen=TEXT_LINES_KEPT)  # text the device printed outside frames
        self._decoder = FrameDecoder()
        self._unread: deque[Frame | FrameError] = deque()
        self._seq = 0
        if getattr(port, "timeout", None) != min(POLL_INTERVAL, timeout):
            port.timeout = min(POLL_INTERVAL, timeout)

    @classmethod
    def from_url(cls, url: str, *, baudrate: int = 115200, timeout: float = 30.0, deadline: float = 600.0,
                 **serial_kw: Any) -> Device:
        """Open ``url`` with ``serial.serial_for_url`` (/dev/ttyACM0, socket://host:port, loop://)."""
        try:
            port = serial.serial_for_url(url, baudrate=baudrate, timeout=min(POLL_INTERVAL, timeout),
                                         write_timeout=timeout, **serial_kw)
        except (serial.SerialException, OSError, ValueError) as e:
            raise DeviceGone(f"cannot open {url}: {e} — is the emulator running / the board plugged in?") from e
        return cls(port, timeout=timeout, deadline=deadline, name=url)

    def close(self) -> None:
        try:
            self.port.close()
        except (serial.SerialException, OSError) as e:
            log.debug("%s: error while closing: %s", self.name, e)

    def __enter__(self) -> Device:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ requests

    def wait_boot(self, timeout: float | None = None) -> Boot:
        """Wait for the BOOT announcement of a device that has just been started or reset.

        Bytes sent to a device before its UART is set up may be lost (an STM32 USART drops them), so
        a host that starts the device waits for BOOT before its first request."""
        wait = _Wait("start-up (waiting for BOOT)")
        limit = self.timeout if timeout is None else timeout
        start = time.monotonic()
        while True:
            while self._unread:
                item = self._unread.popleft()
                if isinstance(item, Frame) and item.type == MsgType.BOOT:
                    return Boot.unpack(item.body)
                self._accept(item, -1, wait)
            if time.monotonic() - start >= limit:
                raise DeviceTimeout(f"{self.name}: the device did not announce itself within {limit:g}s of "
                                    f"starting — wrong firmware, or it crashed at boot?"
                                    f"{wait.context(self._decoder.pending)}")
            data = self._read(wait.what)
            if data:
                self._unread.extend(self._decoder.feed(data))

    def hello(self, *, deadline: float | None = None) -> tuple[list[Phase], Info]:
        """HELLO: returns the boot-time PHASE record (image validation) and the INFO reply.

        A device that announces BOOT meanwhile was starting when HELLO went out (and may have lost
        it): HELLO is said once more."""
        try:
            return self._hello_once(deadline)
        except DeviceRestarted:
            log.debug("%s: BOOT while waiting for the reply to HELLO; saying HELLO again", self.name)
            return self._hello_once(deadline)

    def _hello_once(self, deadline: float | None) -> tuple[list[Phase], Info]:
        seq = self._send(Hello(), "HELLO")
        phases: list[Phase] = []
        for msg in self._replies(seq, "HELLO", deadline):
            if isinstance(msg, Phase):
                phases.append(msg)
            elif isinstance(msg, Info):
                if msg.proto_version != PROTO_VERSION:
                    raise ProtocolError(f"{self.name} speaks protocol version {msg.proto_version}, this host "
                                        f"speaks version {PROTO_VERSION} — update the firmware or the host tool")
                return phases, msg
            else:
                self._unexpected(msg, "HELLO")
        raise AssertionError("unreachable")

    def run(self, prompt_ids: Iterable[int], n_tokens: int, seed: int = 0, temperature: float = 0.0,
            topp: float = 1.0, on_phase: Callable[[Phase], None] | None = None, *,
            deadline: float | None = None) -> tuple[list[Phase], Result]:
        """RUN: streams PHASE records (``on_phase`` is called for each) until RESULT.

        Raises DeviceError for an ERROR reply or a RESULT with a non-zero status, and
        ProtocolError if the number of PHASE records received differs from RESULT.n_phases.
        """
        request = RunRequest(tuple(int(t) for t in prompt_ids), n_tokens, seed, temperature, topp)
        _check_run_request(request)
        seq = self._send(request, "RUN")
        phases: list[Phase] = []
        for msg in self._replies(seq, "RUN", deadline):
            if isinstance(msg, Phase):
                phases.append(msg)
                if on_phase is not None:
                    on_phase(msg)
            elif isinstance(msg, Result):
                if msg.status != ErrorCode.E_OK:
                    raise DeviceError(msg.status, request="RUN")
                if msg.n_phases != len(phases):
                    raise ProtocolError(f"RUN reply incomplete: RESULT says {msg.n_phases} PHASE records, "
                                        f"received {len(phases)}")
                return phases, msg
            else:
                self._unexpected(msg, "RUN")
        raise AssertionError("unreachable")

    def mem(self, *, deadline: float | None = None) -> MemInfo:
        """MEM: memory usage of the firmware and the model."""
        seq = self._send(Mem(), "MEM")
        return self._single_reply(seq, "MEM", MemInfo, deadline)

    def selftest(self, iterations: int, *, deadline: float | None = None) -> SelftestDone:
        """SELFTEST: runs the calibration loop ``iterations`` times. PHASE markers (kind 3) the
        device may send before SELFTEST_DONE are skipped."""
        if not 0 <= iterations <= 0xFFFFFFFF:
            raise ValueError(f"iterations {iterations} does not fit in 32 bits")
        seq = self._send(Selftest(iterations), "SELFTEST")
        return self._single_reply(seq, "SELFTEST", SelftestDone, deadline)

    def workload(self, id: int, size: int, iterations: int, *,
                 deadline: float | None = None) -> tuple[Phase, WorkloadDone]:
        """WORKLOAD: run calibration workload ``id`` (see twin/bench/workloads.py) ``iterations`` times on
        buffers of ``size``. Returns the PHASE record (kind 4, the phase the profiler's markers
        bracket) and WORKLOAD_DONE (cycles from the board's counter, 0 in emulators; checksum)."""
        for name, value, bits in (("id", id, 16), ("size", size, 32), ("iterations", iterations, 32)):
            if not 0 <= value < 1 << bits:
                raise ValueError(f"workload {name} {value} does not fit in {bits} bits")
        seq = self._send(WorkloadRequest(id, size, iterations), "WORKLOAD")
        phase: Phase | None = None
        for msg in self._replies(seq, "WORKLOAD", deadline):
            if isinstance(msg, Phase):
                phase = msg
            elif isinstance(msg, WorkloadDone):
                if phase is None:
                    raise ProtocolError("WORKLOAD reply incomplete: WORKLOAD_DONE without its PHASE record")
                if (msg.id, msg.size, msg.iterations) != (id, size, iterations):
                    raise ProtocolError(f"WORKLOAD_DONE answers workload {msg.id:#x} size {msg.size} "
                                        f"iterations {msg.iterations}, not the one requested")
                return phase, msg
            else:
                self._unexpected(msg, "WORKLOAD")
        raise AssertionError("unreachable")

    def exit(self, code: int = 0, *, deadline: float | None = None) -> None:
        """EXIT: the device answers BYE, then ends the emulator / resets the board. The
        connection closing before BYE arrives is accepted."""
        if not 0 <= code <= 0xFF:
            raise ValueError(f"exit code {code} does not fit in a byte")
        seq = self._send(Exit(code), "EXIT")
        try:
            self._single_reply(seq, "EXIT", Bye, deadline if deadline is not None else self.timeout)
        except DeviceGone as e:
            log.debug("%s: connection closed after EXIT before BYE: %s", self.name, e)

    # ------------------------------------------------------------------ internals

    def _next_seq(self) -> int:
        self._seq = self._seq % (SEQ_NONE - 1) + 1  # 1 .. 0xFFFE; 0xFFFF is SEQ_NONE
        return self._seq

    def _send(self, msg: Message, what: str) -> int:
        seq = self._next_seq()
        data = b"\x00" + encode_frame(msg.TYPE, seq, msg.pack())  # leading 0x00 resyncs the receiver
        try:
            self.port.write(data)
        except serial.SerialTimeoutException as e:
            raise DeviceTimeout(f"could not send {what} to {self.name} within {self.timeout:g}s — the device "
                                "is not reading its input") from e
        except (serial.SerialException, OSError) as e:
            raise DeviceGone(f"cannot send {what} to {self.name}: {e} — did the emulator exit or the "
                             "board get unplugged?") from e
        log.debug("%s: sent %s seq %d (%d bytes)", self.name, what, seq, len(data))
        return seq

    def _single_reply(self, seq: int, what: str, cls: type, deadline: float | None) -> Any:
        for msg in self._replies(seq, what, deadline):
            if isinstance(msg, cls):
                return msg
            if isinstance(msg, Phase):
                log.debug("%s: PHASE record during %s: %s", self.name, what, msg)
                continue
            self._unexpected(msg, what)
        raise AssertionError("unreachable")

    def _unexpected(self, msg: Message, what: str) -> None:
        raise ProtocolError(f"unexpected {type_name(msg.TYPE)} reply to {what}")

    def _replies(self, seq: int, what: str, deadline: float | None) -> Iterator[Message]:
        """Yield the decoded replies carrying ``seq``, forever; raise on ERROR, time-outs, EOF."""
        wait = _Wait(what)
        start = last_byte = time.monotonic()
        limit = self.deadline if deadline is None else deadline
        while True:
            while self._unread:
                msg = self._accept(self._unread.popleft(), seq, wait)
                if msg is not None:
                    wait.frames += 1
                    wait.last_type = type_name(msg.TYPE)
                    yield msg
            now = time.monotonic()
            if now - start >= limit:
                raise DeviceTimeout(f"{self.name}: no complete reply within {limit:g}s after {what}"
                                    f"{self._progress(wait)}{wait.context(self._decoder.pending)}")
            if now - last_byte >= self.timeout:
                raise DeviceTimeout(f"{self.name}: no reply from the device for {self.timeout:g}s after {what}"
                                    f"{self._progress(wait)} — is it hung or unplugged?"
                                    f"{wait.context(self._decoder.pending)}")
            data = self._read(what)
            if data:
                last_byte = time.monotonic()
                self._unread.extend(self._decoder.feed(data))

    @staticmethod
    def _progress(wait: _Wait) -> str:
        return f" (after {wait.frames} reply frame(s), last {wait.last_type})" if wait.frames else ""

    def _read(self, what: str) -> bytes:
        try:
            waiting = self.port.in_waiting
            return bytes(self.port.read(waiting if waiting > 0 else 1))
        except (serial.SerialException, OSError) as e:
            raise DeviceGone(f"{self.name}: connection lost while waiting for the reply to {what} ({e}) — "
                             "did the emulator exit or the board get unplugged?") from e

    def _accept(self, item: Frame | FrameError, seq: int, wait: _Wait) -> Message | None:
        """Classify one frame or framing error; return the message if it answers ``seq``."""
        if isinstance(item, FrameError):
            if item.is_text:
                line = item.raw.decode("ascii").strip()
                log.info("%s printed: %s", self.name, line)
                self.text.append(line)
                wait.text.append(line)
            else:
                log.warning("%s: %s", self.name, item)
                wait.corrupt.append(item)
            return None
        if item.type == MsgType.ERROR and item.seq == SEQ_NONE:  # unsolicited
            err = ErrorReply.unpack(item.body)
            if err.code != ErrorCode.E_FRAME:  # e.g. E_FAULT: the firmware crashed
                raise err.to_exception(wait.what)
            log.warning("%s rejected a frame from the host: %s", self.name, err.to_exception())
            wait.host_frames_rejected += 1
            return None
        if item.type == MsgType.BOOT:
            raise DeviceRestarted(f"{self.name} restarted while the host was waiting for the reply to {wait.what} "
                             "— it reset (watchdog, brown-out, crash) or was re-flashed")
        if item.type < 0x80:
            raise ProtocolError(f"{self.name} sent back a {type_name(item.type)} request: the port echoes what "
                                "the host writes (loop:// or a loopback cable) — no device is answering")
        if item.seq != seq:
            log.debug("%s: ignoring stale %s frame with seq %d (waiting for seq %d after %s)",
                      self.name, type_name(item.type), item.seq, seq, wait.what)
            return None
        msg = decode_message(item)
        if isinstance(msg, ErrorReply):
            raise msg.to_exception(wait.what)
        return msg


def _check_run_request(req: RunRequest) -> None:
    if any(not 0 <= t <= 0xFFFF for t in req.prompt):
        raise ValueError("prompt token ids must be in 0..65535")
    if not 0 <= req.n_tokens <= 0xFFFF:
        raise ValueError(f"n_tokens {req.n_tokens} does not fit in 16 bits")
    if not 0 <= req.seed <= 0xFFFFFFFF:
        raise ValueError(f"seed {req.seed} does not fit in 32 bits")
    head = RunRequest._S.size
    if head + 2 * len(req.prompt) > MAX_BODY:
        raise ValueError(f"prompt of {len(req.prompt)} tokens does not fit in one frame "
                         f"(at most {(MAX_BODY - head) // 2})")
