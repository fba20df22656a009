"""End to end on real QEMU: the firmware talks to the host through pyserial (socket://), its tokens
equal the host reference, the plugin's counts are exact, and bad images / hangs / crashes become
clear errors."""

import struct
import time
from pathlib import Path

import pytest
import serial

from twin.device.build import build_firmware
from twin.device.protocol import DeviceError, ErrorCode, FrameDecoder, MsgType, encode_frame
from twin.device.qemu import EmulatorError
from twin.model import modelgen
from twin.model.image import fix_crc, write_image
from twin.platforms import get_platform
from twin.profile.counts import analyze, parse_dump, plugin_args
from twin.runner import RunSpec, emulator_session, model_image, run

pytestmark = pytest.mark.qemu

SPINE = ["mps2-an386", "mps2-an500", "mps2-an505", "riscv32-virt", "stm32f4-disco"]


def _check_report(r: dict, tokens: int) -> None:
    ins = r["instructions"]
    assert len(r["tokens"]) == tokens == len(ins["by_phase"]["decode"])
    assert ins["total"] == ins["by_phase"]["prefill"] + sum(ins["by_phase"]["decode"])
    assert sum(ins["by_class"].values()) == ins["total"]
    assert sum(f["instructions"] for f in r["functions"]) == ins["total"]
    counts = [f["instructions"] for f in r["functions"]]
    assert counts == sorted(counts, reverse=True)
    assert all(d > 0 for d in ins["by_phase"]["decode"])
    assert ins["by_class"]["mul"] > 0 and ins["by_class"]["load"] > 0
    br = ins["branches"]
    assert br["taken"] > 0 and br["not_taken"] > 0
    assert br["unresolved"] == 0            # the plugin's edge counts split every conditional branch
    m = r["memory"]
    assert 0 < m["flash_bytes"] and 0 < m["ram_static_bytes"] and 0 < m["stack_peak_bytes"] < 16384


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("platform", SPINE)
def test_firmware_tokens_equal_reference(platform, bits):
    r = run(RunSpec(platform=platform, bits=bits, tokens=10))
    assert r["matches_reference"], (r["tokens"], r["reference_tokens"])
    _check_report(r, 10)
    # matrix-vector products dominate a decoder's work (on RV32 next to the soft-float helpers)
    assert any(f["name"].startswith("matvec_q") for f in r["functions"][:3])


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("platform", ["mps2-an386", "riscv32-virt"])
def test_int8_kv_cache_tokens_equal_reference(platform, bits):
    r = run(RunSpec(platform=platform, bits=bits, tokens=10, kv_cache="int8"))
    assert r["kv_cache"] == "int8"
    assert r["matches_reference"], (r["tokens"], r["reference_tokens"])
    _check_report(r, 10)
    assert any(f["name"] == "attention_head_q8" for f in r["functions"])


@pytest.mark.parametrize("platform", ["mps2-an505", "riscv32-virt"])
def test_sampled_generation_matches_reference(platform):
    r = run(RunSpec(platform=platform, bits=8, tokens=12, temperature=0.9, topp=0.85, seed=1234,
                    prompt="Hello"))
    assert r["matches_reference"]
    greedy = run(RunSpec(platform=platform, bits=8, tokens=12, prompt="Hello"))
    assert r["tokens"] != greedy["tokens"]      # sampling really happened


def test_inference_counts_are_deterministic():
    a = run(RunSpec(platform="mps2-an386", tokens=6))
    b = run(RunSpec(platform="mps2-an386", tokens=6))
    assert a["instructions"] == b["instructions"]
    assert a["functions"] == b["functions"]


def _selftest_profiles(platform_id: str, iterations: list[int], tmp_path: Path):
    p = get_platform(platform_id)
    fw = build_firmware(p)
    image, _, _ = model_image(RunSpec(platform=platform_id))
    dump = tmp_path / f"{platform_id}-{'-'.join(map(str, iterations))}.dump"
    with emulator_session(p, fw.elf, image, extra_args=tuple(plugin_args(fw.elf, dump))) as s:
        done = [s.device.selftest(n) for n in iterations]
    assert [d.iterations for d in done] == iterations
    assert [d.checksum for d in done] == [n * (n + 1) // 2 % 2**32 for n in iterations]
    segments = analyze(parse_dump(dump), fw.elf, p.arch)
    # segments: boot | validate | io | selftest 1 | io | selftest 2 | ...
    assert len(segments) == 2 * (1 + len(iterations)) + 1
    return [segments[3 + 2 * i] for i in range(len(iterations))]


@pytest.mark.parametrize("platform", ["mps2-an386", "riscv32-virt", "stm32f4-disco"])
def test_plugin_counts_are_exact(platform, tmp_path):
    small, large = _selftest_profiles(platform, [1000, 5000], tmp_path)
    extra = 4000
    # the loop is add, subtract, branch: exactly 3 instructions, 2 ALU + 1 branch, per iteration
    assert large.total - small.total == 3 * extra
    assert large.by_class["alu"] - small.by_class["alu"] == 2 * extra
    assert large.by_class["branch"] - small.by_class["branch"] == extra
    assert all(large.by_class[c] == small.by_class[c] for c in large.by_class if c not in ("alu", "branch"))
    # a second run counts the same, instruction for instruction
    again_small, again_large = _selftest_profiles(platform, [1000, 5000], tmp_path)
    assert (again_small, again_large) == (small, large)


def _patched(image: bytes, offset: int, value: bytes, crc: bool) -> bytes:
    out = image[:offset] + value + image[offset + len(value):]
    return fix_crc(out) if crc else out


def _image_status(platform_id: str, image: bytes, tmp_path: Path) -> tuple[int, DeviceError]:
    p = get_platform(platform_id)
    fw = build_firmware(p)
    path = tmp_path / "model.twlm"
    path.write_bytes(image)
    with emulator_session(p, fw.elf, path) as s:
        status = s.info.status
        with pytest.raises(DeviceError) as err:
            s.device.run(modelgen.encode("Hi"), 2)
    return status, err.value


@pytest.mark.parametrize("case,code", [
    ("bad_magic", ErrorCode.E_BAD_MAGIC),
    ("bad_version", ErrorCode.E_VERSION),
    ("bad_crc", ErrorCode.E_CRC),
    ("too_large", ErrorCode.E_TOO_LARGE),
    ("no_ram", ErrorCode.E_NO_RAM),
])
def test_corrupt_model_image_gives_specific_error(case, code, tmp_path):
    platform = "stm32f4-disco"
    good = write_image(modelgen.builtin_model(), bits=4)
    partition = get_platform(platform).model.size
    image = {
        "bad_magic": lambda: _patched(good, 0, b"XXXX", crc=False),
        "bad_version": lambda: _patched(good, 4, struct.pack("<H", 99), crc=False),
        "bad_crc": lambda: _patched(good, len(good) - 7, bytes([good[-7] ^ 0x40]), crc=False),
        "too_large": lambda: _patched(good, 8, struct.pack("<I", partition + 4), crc=False),
        # a real model whose KV cache (512 positions) needs far more than the F407's 128 KiB of SRAM
        "no_ram": lambda: write_image(modelgen.generate_model(modelgen.ModelConfig(seq_len=512)), bits=4),
    }[case]()
    status, err = _image_status(platform, image, tmp_path)
    assert status == code
    assert err.code == ErrorCode.E_NO_MODEL and err.detail == code


def test_runner_reports_bad_image_in_one_sentence(tmp_path):
    image = write_image(modelgen.builtin_model(), bits=8)
    path = tmp_path / "broken.twlm"
    path.write_bytes(image[:100] + bytes([image[100] ^ 1]) + image[101:])
    from twin.model.image import ImageError
    with pytest.raises(ImageError, match="CRC"):
        run(RunSpec(platform="mps2-an386", model=str(path)))


def test_hung_firmware_is_killed_at_the_timeout():
    p = get_platform("mps2-an386")
    fw = build_firmware(p)
    image, _, _ = model_image(RunSpec(platform=p.id))
    start = time.monotonic()
    with pytest.raises(EmulatorError, match="hung; QEMU was killed") as err:
        with emulator_session(p, fw.elf, image, reply_timeout=1.0) as s:
            qemu = s.qemu
            s.device.selftest(0xFFFFFFFF)      # ~13 G instructions: far longer than the 1 s time-out
    assert time.monotonic() - start < 15
    assert not qemu.alive()
    assert "SELFTEST" in str(err.value)


def test_crashed_emulator_is_reported():
    p = get_platform("riscv32-virt")
    fw = build_firmware(p)
    image, _, _ = model_image(RunSpec(platform=p.id))
    with pytest.raises(EmulatorError, match="stopped unexpectedly"):
        with emulator_session(p, fw.elf, image, reply_timeout=5.0) as s:
            s.qemu.proc.kill()
            s.qemu.proc.wait()
            s.device.mem()


def test_emulator_that_fails_to_start_says_why():
    import dataclasses
    p = get_platform("mps2-an386")
    broken = dataclasses.replace(p, emulator=dataclasses.replace(p.emulator, machine="no-such-board"))
    fw = build_firmware(p)
    with pytest.raises(EmulatorError, match=r"exited with status 1\).*unsupported machine"):
        with emulator_session(broken, fw.elf, None, reply_timeout=5.0):
            pass


def test_corrupt_frame_is_rejected_and_the_link_recovers():
    p = get_platform("mps2-an505")
    fw = build_firmware(p)
    image, _, _ = model_image(RunSpec(platform=p.id))
    with emulator_session(p, fw.elf, image) as s:
        port: serial.Serial = s.device.port
        frame = bytearray(encode_frame(MsgType.MEM, 7))
        frame[2] ^= 0x10                                   # damage one byte: the CRC must catch it
        port.write(b"\x00" + bytes(frame) + b"\x00")
        decoder, replies, deadline = FrameDecoder(), [], time.monotonic() + 5
        while not replies and time.monotonic() < deadline:
            replies = [f for f in decoder.feed(port.read(64)) if not isinstance(f, Exception)]
        assert replies and replies[0].type == MsgType.ERROR
        code, detail = struct.unpack_from("<HI", replies[0].body)
        assert code == ErrorCode.E_FRAME
        assert s.device.mem().image_size > 0                # the next good request is answered


def test_memory_traffic_by_region():
    plain = run(RunSpec(platform="mps2-an386", tokens=3))
    r = run(RunSpec(platform="mps2-an386", tokens=3, mem_traffic=True))
    by_fn = r["instructions"]["decode_by_function"]
    stripped = {f: {k: v for k, v in d.items() if k not in ("mem", "dcache_misses")} for f, d in by_fn.items()}
    # no count changes: memory traffic adds the loads and stores, and the data caches they go through
    assert {**r["instructions"], "decode_by_function": stripped, "by_phase_dcache": None} == \
        {**plain["instructions"], "by_phase_dcache": None}
    assert plain["instructions"]["by_phase_dcache"] == {"prefill": {}, "decode": {}}
    dcache = r["instructions"]["by_phase_dcache"]["decode"]      # the catalog's Armv7E-M data caches:
    assert set(dcache) == {"128B/16B/8w", "16384B/32B/4w", "4096B/32B/4w"}     # F407's ART, H743's, F746's L1
    assert all(0 < d["misses"] < d["lookups"] for d in dcache.values())
    decode = r["memory_traffic"]["decode"]
    for region, d in decode.items():                               # per function, adding up to the phase
        for kind in ("loads", "stores"):
            assert sum(f["mem"].get(region, {}).get(kind, 0) for f in by_fn.values()) == d[kind], (region, kind)
    assert all("mem" not in d for d in plain["instructions"]["decode_by_function"].values())
    assert decode["model"]["stores"] == 0 and decode["code"]["stores"] == 0   # weights are read in place
    assert decode["ram"]["stores"] > 0 and decode["ram"]["loads"] > 0
    # every weight byte is read once per generated token, at most 4 bytes per load
    assert 4 * decode["model"]["loads"] / 3 >= 0.9 * r["memory"]["model_image_bytes"]
    assert plain["memory_traffic"] is None


def test_parallel_runs_do_not_collide():
    from concurrent.futures import ThreadPoolExecutor
    specs = [RunSpec(platform=p, tokens=4) for p in ("mps2-an386", "mps2-an386", "riscv32-virt", "stm32f4-disco")]
    with ThreadPoolExecutor(max_workers=4) as pool:
        reports = list(pool.map(run, specs))
    assert all(r["matches_reference"] for r in reports)
    assert reports[0]["instructions"] == reports[1]["instructions"]
