"""Host side of the host <-> device protocol (docs/protocol.md).

Layers, bottom up:

* COBS (:func:`cobs_encode`, :func:`cobs_decode`) and CRC-32 (``zlib.crc32``);
* frames: :func:`encode_frame` and the streaming :class:`FrameDecoder`, which turns a byte
  stream into :class:`Frame` objects and :class:`FrameError` objects (for corrupt frames);
* messages: one frozen dataclass per message type with ``pack()`` / ``unpack()``, and
  :func:`decode_message` to turn a :class:`Frame` into the matching dataclass;
* the error-code table (:class:`ErrorCode`, :func:`describe_error`) and :class:`DeviceError`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar

PROTO_VERSION = 2   # 2: PHASE carries the retired-instruction count between its marks
MAX_PAYLOAD = 1024  # type + seq + body, without the CRC
HEADER_SIZE = 3  # type:u8 seq:u16
CRC_SIZE = 4
MAX_BODY = MAX_PAYLOAD - HEADER_SIZE
# COBS adds one code byte per 254 data bytes (plus one), so this bounds an encoded frame.
MAX_ENCODED = MAX_PAYLOAD + CRC_SIZE + (MAX_PAYLOAD + CRC_SIZE) // 254 + 1
SEQ_NONE = 0xFFFF  # seq of unsolicited replies (ERROR E_FRAME for a frame the device could not read)

_HEADER = struct.Struct("<BH")
_CRC = struct.Struct("<I")


class ProtocolError(Exception):
    """The bytes or a message from the device do not follow the protocol."""


# --------------------------------------------------------------------------- COBS


class CobsError(ProtocolError):
    """The bytes are not a valid COBS encoding."""


def cobs_encode(data: bytes) -> bytes:
    """COBS-encode ``data``: the result contains no 0x00 byte (the delimiter is not added).

    Canonical form: a block of 254 non-zero bytes that ends the data is not followed by an
    extra empty block (the firmware encoder produces exactly the same bytes).
    """
    out = bytearray()
    i, n = 0, len(data)
    while True:
        zero = data.find(0, i, i + 254)
        if zero >= 0:  # a block ending in a (removed) zero
            out.append(zero - i + 1)
            out += data[i:zero]
            i = zero + 1
            continue
        chunk = data[i : i + 254]
        if len(chunk) == 254:  # a full block: no implied zero
            out.append(0xFF)
            out += chunk
            i += 254
            if i == n:
                return bytes(out)
            continue
        out.append(len(chunk) + 1)  # the last block
        out += chunk
        return bytes(out)


def cobs_decode(encoded: bytes) -> bytes:
    """Decode one COBS block sequence (without the 0x00 delimiter); raise CobsError if invalid."""
    out = bytearray()
    i, n = 0, len(encoded)
    while i < n:
        code = encoded[i]
        if code == 0:
            raise CobsError(f"zero byte inside a COBS frame at offset {i}")
        end = i + code
        if end > n:
            raise CobsError(f"COBS block at offset {i} needs {code - 1} bytes, only {n - i - 1} left")
        block = encoded[i + 1 : end]
        if 0 in block:
            raise CobsError(f"zero byte inside a COBS frame at offset {i + 1 + block.index(0)}")
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


# --------------------------------------------------------------------------- frames


@dataclass(frozen=True)
class Frame:
    """One valid frame: its type, sequence number and body."""

    type: int
    seq: int
    body: bytes = b""


class FrameError(ProtocolError):
    """A corrupt frame: bad COBS, bad CRC, too short or too long.

    ``reason`` is one of "cobs", "crc", "short", "oversize"; ``raw`` holds (up to MAX_ENCODED of)
    the bytes received between the delimiters, so a caller can tell a text line printed by the
    firmware (see :attr:`is_text`) from a damaged frame.
    """

    def __init__(self, reason: str, detail: str, raw: bytes = b""):
        super().__init__(f"corrupt frame: {detail}")
        self.reason = reason
        self.detail = detail
        self.raw = raw

    @property
    def is_text(self) -> bool:
        """True if the bytes look like printable text (e.g. a boot banner), not a frame."""
        return bool(self.raw) and all(32 <= b < 127 or b in (9, 10, 13) for b in self.raw)


def encode_frame(type: int, seq: int, body: bytes = b"") -> bytes:
    """Encode one frame: COBS(type seq body crc32) followed by the 0x00 delimiter."""
    if not 0 <= type <= 0xFF:
        raise ValueError(f"frame type {type} does not fit in a byte")
    if not 0 <= seq <= 0xFFFF:
        raise ValueError(f"sequence number {seq} does not fit in 16 bits")
    if len(body) > MAX_BODY:
        raise ValueError(f"frame body of {len(body)} bytes is longer than the maximum {MAX_BODY}")
    payload = _HEADER.pack(type, seq) + bytes(body)
    return cobs_encode(payload + _CRC.pack(zlib.crc32(payload))) + b"\x00"


def decode_frame(encoded: bytes) -> Frame:
    """Decode the bytes of one frame between two delimiters; raise FrameError if corrupt."""
    raw = bytes(encoded[:MAX_ENCODED])
    if len(encoded) > MAX_ENCODED:
        raise FrameError("oversize", f"{len(encoded)} bytes without a frame delimiter "
                                     f"(the largest frame is {MAX_ENCODED} bytes)", raw)
    try:
        data = cobs_decode(encoded)
    except CobsError as e:
        raise FrameError("cobs", f"bad COBS encoding ({e})", raw) from None
    if len(data) < HEADER_SIZE + CRC_SIZE:
        raise FrameError("short", f"only {len(data)} bytes (a frame has at least {HEADER_SIZE + CRC_SIZE})", raw)
    if len(data) > MAX_PAYLOAD + CRC_SIZE:
        raise FrameError("oversize", f"payload of {len(data) - CRC_SIZE} bytes is longer than the maximum {MAX_PAYLOAD}", raw)
    payload, (got,) = data[:-CRC_SIZE], _CRC.unpack(data[-CRC_SIZE:])
    expected = zlib.crc32(payload)
    if got != expected:
        raise FrameError("crc", f"CRC mismatch (got 0x{got:08x}, expected 0x{expected:08x})", raw)
    type_, seq = _HEADER.unpack_from(payload)
    return Frame(type_, seq, payload[HEADER_SIZE:])


class FrameDecoder:
    """Streaming frame decoder: ``feed()`` bytes as they arrive, get frames and errors back.

    Empty frames (two delimiters in a row) are silently skipped; senders put a 0x00 before each
    frame to separate it from whatever came before. Memory is bounded: bytes past MAX_ENCODED
    without a delimiter are counted but not kept.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._size = 0  # bytes since the last delimiter (may exceed len(self._buf))

    @property
    def pending(self) -> int:
        """Bytes received since the last delimiter (an incomplete frame)."""
        return self._size

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        """Consume ``data``; return the frames (and FrameErrors) completed by it, in order."""
        *complete, rest = bytes(data).split(b"\x00")
        results: list[Frame | FrameError] = []
        for piece in complete:
            self._append(piece)
            if self._size:
                results.append(self._finish())
            self._buf.clear()
            self._size = 0
        self._append(rest)
        return results

    def _append(self, piece: bytes) -> None:
        room = MAX_ENCODED - len(self._buf)
        if room > 0:
            self._buf += piece[:room]
        self._size += len(piece)

    def _finish(self) -> Frame | FrameError:
        if self._size > MAX_ENCODED:
            return FrameError("oversize", f"{self._size} bytes without a frame delimiter "
                                          f"(the largest frame is {MAX_ENCODED} bytes)", bytes(self._buf))
        try:
            return decode_frame(bytes(self._buf))
        except FrameError as e:
            return e


# --------------------------------------------------------------------------- error codes


class ErrorCode(IntEnum):
    E_OK = 0
    E_BAD_MAGIC = 1
    E_VERSION = 2
    E_CRC = 3
    E_TOO_LARGE = 4
    E_NO_RAM = 5
    E_ARCH = 6
    E_QUANT = 7
    E_CORRUPT = 8
    E_ARGS = 9
    E_FRAME = 10
    E_UNKNOWN = 11
    E_NO_MODEL = 12
    E_FAULT = 13


ERROR_SENTENCES: dict[int, str] = {
    ErrorCode.E_OK: "no error",
    ErrorCode.E_BAD_MAGIC: "no model image at the model address (bad magic) — build one with `twin` "
                           "and flash it to the model partition",
    ErrorCode.E_VERSION: "model image format version not supported by this firmware — rebuild the image "
                         "with the `twin` that matches the firmware, or update the firmware",
    ErrorCode.E_CRC: "model image CRC mismatch: the image is corrupt — rebuild it with `twin` or reflash "
                     "the model partition",
    ErrorCode.E_TOO_LARGE: "model image is larger than the model partition — use a smaller model or "
                           "stronger quantization, or a board with more flash",
    ErrorCode.E_NO_RAM: "the model's buffers do not fit in the board's RAM — use a smaller model or "
                        "context length, or a board with more RAM",
    ErrorCode.E_ARCH: "model architecture not supported by this firmware — export a supported "
                      "architecture or update the firmware",
    ErrorCode.E_QUANT: "tensor quantization (bit width / group size) not supported — re-quantize the "
                       "model with a supported bit width and group size",
    ErrorCode.E_CORRUPT: "model header or tensor table inconsistent — rebuild the image with `twin`",
    ErrorCode.E_ARGS: "bad request arguments (e.g. token id out of range, prompt longer than the "
                      "context) — check the prompt tokens and the number of tokens requested",
    ErrorCode.E_FRAME: "corrupt frame received (CRC, COBS or length) — the link is damaging data: check "
                       "the baud rate, cable and that nothing else uses the port",
    ErrorCode.E_UNKNOWN: "unknown message type — the host and firmware protocol versions differ; "
                         "update one of them",
    ErrorCode.E_NO_MODEL: "RUN refused: no valid model image — see the image status from `hello` "
                          "and flash a valid model",
    ErrorCode.E_FAULT: "the firmware crashed (hard fault / trap; detail is the faulting pc) — a firmware "
                       "bug: report it with the build id and the pc",
}


def error_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"E_{code}"


def describe_error(code: int) -> str:
    """The sentence the host prints for an error code: what was wrong and what to do."""
    return ERROR_SENTENCES.get(code, f"unknown error code {code} — the firmware is newer than this host tool")


class DeviceError(Exception):
    """The device answered with an error (an ERROR reply, or a failed status)."""

    def __init__(self, code: int, detail: int = 0, message: str = "", request: str = ""):
        self.code = code
        self.detail = detail
        self.device_message = message
        self.request = request
        self.sentence = describe_error(code)
        text = f"{error_name(code)}: {self.sentence}"
        extras = [f"device says: {message}"] if message else []
        if detail:
            extras.append(f"detail 0x{detail:x}")
        if request:
            text = f"{request} failed: {text}"
        if extras:
            text += f" ({'; '.join(extras)})"
        super().__init__(text)


# --------------------------------------------------------------------------- messages


class MsgType(IntEnum):
    HELLO = 0x01
    RUN = 0x02
    MEM = 0x03
    SELFTEST = 0x04
    EXIT = 0x05
    WORKLOAD = 0x06
    INFO = 0x81
    PHASE = 0x82
    RESULT = 0x83
    MEMINFO = 0x84
    SELFTEST_DONE = 0x85
    BYE = 0x86
    BOOT = 0x87
    WORKLOAD_DONE = 0x88
    ERROR = 0xEE


def type_name(type: int) -> str:
    try:
        return MsgType(type).name
    except ValueError:
        return f"type 0x{type:02x}"


class PhaseKind(IntEnum):
    VALIDATE = 0
    PREFILL = 1
    DECODE = 2
    SELFTEST = 3
    WORKLOAD = 4


def _check_size(name: str, body: bytes, size: int) -> None:
    if len(body) != size:
        raise ProtocolError(f"{name} body is {len(body)} bytes, expected {size}")


def _pad(text: str, size: int) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > size:
        raise ValueError(f"string {text!r} is longer than {size} bytes")
    return raw.ljust(size, b"\x00")


def _unpad(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", errors="replace")


@dataclass(frozen=True)
class _Empty:
    """Base for messages with an empty body."""

    TYPE: ClassVar[int]

    def pack(self) -> bytes:
        return b""

    @classmethod
    def unpack(cls, body: bytes):
        _check_size(cls.__name__, body, 0)
        return cls()


@dataclass(frozen=True)
class Hello(_Empty):
    TYPE: ClassVar[int] = MsgType.HELLO


@dataclass(frozen=True)
class Mem(_Empty):
    TYPE: ClassVar[int] = MsgType.MEM


@dataclass(frozen=True)
class Bye(_Empty):
    TYPE: ClassVar[int] = MsgType.BYE


@dataclass(frozen=True)
class Info:
    TYPE: ClassVar[int] = MsgType.INFO
    _S: ClassVar[struct.Struct] = struct.Struct("<HHIIII24s16s24s16s")

    proto_version: int
    status: int  # model-image status: 0 = ready, else an ErrorCode
    clock_hz: int
    image_crc: int
    image_size: int
    validate_cycles: int
    board: str
    core: str
    build_id: str
    model_name: str

    @property
    def ready(self) -> bool:
        return self.status == 0

    def status_error(self) -> DeviceError | None:
        """The image status as a DeviceError (None if the model is ready)."""
        return None if self.ready else DeviceError(self.status, request="model image validation")

    def pack(self) -> bytes:
        return self._S.pack(self.proto_version, self.status, self.clock_hz, self.image_crc, self.image_size,
                            self.validate_cycles, _pad(self.board, 24), _pad(self.core, 16),
                            _pad(self.build_id, 24), _pad(self.model_name, 16))

    @classmethod
    def unpack(cls, body: bytes) -> Info:
        _check_size("INFO", body, cls._S.size)
        *nums, board, core, build_id, model = cls._S.unpack(body)
        return cls(*nums, _unpad(board), _unpad(core), _unpad(build_id), _unpad(model))


@dataclass(frozen=True)
class RunRequest:
    TYPE: ClassVar[int] = MsgType.RUN
    _S: ClassVar[struct.Struct] = struct.Struct("<HHIff")

    prompt: tuple[int, ...]
    n_tokens: int
    seed: int
    temperature: float
    topp: float

    def pack(self) -> bytes:
        if len(self.prompt) > (MAX_BODY - self._S.size) // 2:
            raise ValueError(f"prompt of {len(self.prompt)} tokens does not fit in one frame "
                             f"(at most {(MAX_BODY - self._S.size) // 2})")
        head = self._S.pack(len(self.prompt), self.n_tokens, self.seed, self.temperature, self.topp)
        return head + struct.pack(f"<{len(self.prompt)}H", *self.prompt)

    @classmethod
    def unpack(cls, body: bytes) -> RunRequest:
        if len(body) < cls._S.size:
            raise ProtocolError(f"RUN body is {len(body)} bytes, expected at least {cls._S.size}")
        n_prompt, n_tokens, seed, temperature, topp = cls._S.unpack_from(body)
        _check_size("RUN", body, cls._S.size + 2 * n_prompt)
        prompt = struct.unpack_from(f"<{n_prompt}H", body, cls._S.size)
        return cls(tuple(prompt), n_tokens, seed, temperature, topp)


@dataclass(frozen=True)
class Phase:
    TYPE: ClassVar[int] = MsgType.PHASE
    _S: ClassVar[struct.Struct] = struct.Struct("<BHHIII")

    kind: int  # PhaseKind
    index: int
    token: int
    cycles: int
    stack_peak: int
    instret: int = 0   # retired instructions between the phase's marks (minstret); 0: no such counter

    def pack(self) -> bytes:
        return self._S.pack(self.kind, self.index, self.token, self.cycles, self.stack_peak, self.instret)

    @classmethod
    def unpack(cls, body: bytes) -> Phase:
        _check_size("PHASE", body, cls._S.size)
        return cls(*cls._S.unpack(body))


@dataclass(frozen=True)
class Result:
    TYPE: ClassVar[int] = MsgType.RESULT
    _S: ClassVar[struct.Struct] = struct.Struct("<HHHII")

    status: int
    n_phases: int
    n_tokens: int
    cycles_total: int
    stack_peak: int

    def pack(self) -> bytes:
        return self._S.pack(self.status, self.n_phases, self.n_tokens, self.cycles_total, self.stack_peak)

    @classmethod
    def unpack(cls, body: bytes) -> Result:
        _check_size("RESULT", body, cls._S.size)
        return cls(*cls._S.unpack(body))


@dataclass(frozen=True)
class MemInfo:
    TYPE: ClassVar[int] = MsgType.MEMINFO
    _S: ClassVar[struct.Struct] = struct.Struct("<8I")

    flash_used: int
    ram_static: int
    stack_size: int
    stack_peak: int
    arena_size: int
    arena_used: int
    model_partition: int
    image_size: int

    def pack(self) -> bytes:
        return self._S.pack(self.flash_used, self.ram_static, self.stack_size, self.stack_peak,
                            self.arena_size, self.arena_used, self.model_partition, self.image_size)

    @classmethod
    def unpack(cls, body: bytes) -> MemInfo:
        _check_size("MEMINFO", body, cls._S.size)
        return cls(*cls._S.unpack(body))


@dataclass(frozen=True)
class Boot:
    """Sent once, unsolicited (seq SEQ_NONE), when the firmware has started and is ready to listen."""
    TYPE: ClassVar[int] = MsgType.BOOT

    proto_version: int

    def pack(self) -> bytes:
        return struct.pack("<H", self.proto_version)

    @classmethod
    def unpack(cls, body: bytes) -> Boot:
        _check_size("BOOT", body, 2)
        return cls(*struct.unpack("<H", body))


@dataclass(frozen=True)
class Selftest:
    TYPE: ClassVar[int] = MsgType.SELFTEST

    iterations: int

    def pack(self) -> bytes:
        return struct.pack("<I", self.iterations)

    @classmethod
    def unpack(cls, body: bytes) -> Selftest:
        _check_size("SELFTEST", body, 4)
        return cls(*struct.unpack("<I", body))


@dataclass(frozen=True)
class SelftestDone:
    TYPE: ClassVar[int] = MsgType.SELFTEST_DONE
    _S: ClassVar[struct.Struct] = struct.Struct("<III")

    iterations: int
    checksum: int
    cycles: int

    def pack(self) -> bytes:
        return self._S.pack(self.iterations, self.checksum, self.cycles)

    @classmethod
    def unpack(cls, body: bytes) -> SelftestDone:
        _check_size("SELFTEST_DONE", body, cls._S.size)
        return cls(*cls._S.unpack(body))


@dataclass(frozen=True)
class WorkloadRequest:
    """WORKLOAD: run calibration workload ``id`` (twin/bench/workloads.py) ``iterations`` times."""
    TYPE: ClassVar[int] = MsgType.WORKLOAD
    _S: ClassVar[struct.Struct] = struct.Struct("<HII")

    id: int
    size: int
    iterations: int

    def pack(self) -> bytes:
        return self._S.pack(self.id, self.size, self.iterations)

    @classmethod
    def unpack(cls, body: bytes) -> WorkloadRequest:
        _check_size("WORKLOAD", body, cls._S.size)
        return cls(*cls._S.unpack(body))


@dataclass(frozen=True)
class WorkloadDone:
    TYPE: ClassVar[int] = MsgType.WORKLOAD_DONE
    _S: ClassVar[struct.Struct] = struct.Struct("<HIIII")

    id: int
    size: int
    iterations: int
    cycles: int
    checksum: int

    def pack(self) -> bytes:
        return self._S.pack(self.id, self.size, self.iterations, self.cycles, self.checksum)

    @classmethod
    def unpack(cls, body: bytes) -> WorkloadDone:
        _check_size("WORKLOAD_DONE", body, cls._S.size)
        return cls(*cls._S.unpack(body))


@dataclass(frozen=True)
class Exit:
    TYPE: ClassVar[int] = MsgType.EXIT

    code: int = 0

    def pack(self) -> bytes:
        return struct.pack("<B", self.code)

    @classmethod
    def unpack(cls, body: bytes) -> Exit:
        _check_size("EXIT", body, 1)
        return cls(body[0])


@dataclass(frozen=True)
class ErrorReply:
    TYPE: ClassVar[int] = MsgType.ERROR

    code: int
    detail: int = 0
    message: str = field(default="")

    def pack(self) -> bytes:
        return struct.pack("<HI", self.code, self.detail) + self.message.encode("utf-8")

    @classmethod
    def unpack(cls, body: bytes) -> ErrorReply:
        if len(body) < 6:
            raise ProtocolError(f"ERROR body is {len(body)} bytes, expected at least 6")
        code, detail = struct.unpack_from("<HI", body)
        return cls(code, detail, body[6:].decode("utf-8", errors="replace"))

    def to_exception(self, request: str = "") -> DeviceError:
        return DeviceError(self.code, self.detail, self.message, request)


Message = (Hello | Mem | Bye | Info | RunRequest | Phase | Result | MemInfo | Selftest | SelftestDone | Exit
           | WorkloadRequest | WorkloadDone | ErrorReply)

MESSAGE_CLASSES: dict[int, type] = {cls.TYPE: cls for cls in
                                    (Hello, Mem, Bye, Boot, Info, RunRequest, Phase, Result, MemInfo, Selftest,
                                     SelftestDone, Exit, WorkloadRequest, WorkloadDone, ErrorReply)}


def encode_message(msg: Message, seq: int) -> bytes:
    """Encode a message dataclass as one frame."""
    return encode_frame(msg.TYPE, seq, msg.pack())


def decode_message(frame: Frame) -> Message:
    """Turn a frame into its message dataclass; ProtocolError for an unknown type or bad body."""
    cls = MESSAGE_CLASSES.get(frame.type)
    if cls is None:
        raise ProtocolError(f"unknown message type 0x{frame.type:02x} (seq {frame.seq})")
    return cls.unpack(frame.body)
