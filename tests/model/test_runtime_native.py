"""The C runtime, compiled natively, against the Python reference: bit-exact tokens, logits and
math; image validation codes; warning-free cross-compilation for the MCU targets."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from twin.device.build import KERNELS, runtime_sources
from twin.model import image as im
from twin.model import modelgen
from twin.model.modelgen import builtin_model, encode
from twin.model.reference import QuantReference, quantize_act, tw_expf, tw_sincosf, tw_sqrtf
from twin.platforms import ROOT  # the repository

RUNTIME = ROOT / "firmware" / "runtime"
SOURCES = runtime_sources("ref")     # runtime/*.c and the reference kernel set (firmware/kernels/ref)
WARN = ["-Wall", "-Wextra", "-Wdouble-promotion", "-std=c11"]
CROSS = {
    "cortex-m4": ["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"],
    "rv32imac": ["riscv64-unknown-elf-gcc", "-march=rv32imac_zicsr", "-mabi=ilp32"],
}
# optimized kernel sets compiled (warning-free too) for a target besides ref
CROSS_KERNELS = {"cortex-m4": sorted((KERNELS / "arm_dsp").glob("*.c")), "rv32imac": []}
PROMPT = encode("Once upon")


def f32_hex(v: float) -> str:
    return f"{int(np.float32(v).view(np.uint32)):08x}"


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("gcc"):
        pytest.skip("host gcc not installed")
    exe = tmp_path_factory.mktemp("native") / "driver"
    cmd = ["gcc", "-O2", "-ffp-contract=off", "-fno-fast-math", *WARN, f"-I{RUNTIME}",
           str(ROOT / "tests" / "native" / "driver.c"), *map(str, SOURCES), "-o", str(exe)]
    subprocess.run(cmd, check=True)
    return exe


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, int], Path]:
    d = tmp_path_factory.mktemp("images")
    out = {}
    for bits in (4, 8):
        for group in (32, 64):
            p = d / f"model_q{bits}_g{group}.bin"
            p.write_bytes(im.write_image(builtin_model(), bits, group))
            out[(bits, group)] = p
    return out


def run(driver: Path, *args: object, stdin: str | None = None) -> str:
    r = subprocess.run([str(driver), *map(str, args)], capture_output=True, text=True, input=stdin, check=True)
    return r.stdout


# ------------------------------------------------------------ bit exactness


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64])
@pytest.mark.parametrize("temperature,topp,seed", [(0.0, 0.9, 0), (0.8, 0.9, 1234), (1.0, 1.0, 7)])
def test_generation_matches_reference(driver, images, bits, group, temperature, topp, seed):
    path = images[(bits, group)]
    n = 30
    expected = QuantReference(path.read_bytes()).generate(PROMPT, n, seed=seed, temperature=temperature, topp=topp)
    got = run(driver, "gen", path, n, seed, f32_hex(temperature), f32_hex(topp), *PROMPT).split()
    assert [int(t) for t in got] == expected


@pytest.mark.parametrize("bits", [4, 8])
def test_logits_bit_exact(driver, images, bits):
    path = images[(bits, 32)]
    tokens = PROMPT + [100, 7, 300]
    ref = QuantReference(path.read_bytes())
    lines = run(driver, "logits", path, *tokens).splitlines()
    assert len(lines) == len(tokens)
    for pos, (tok, line) in enumerate(zip(tokens, lines, strict=True)):
        c_bits = np.array([int(h, 16) for h in line.split()], dtype=np.uint32)
        py_bits = ref.forward(tok, pos).view(np.uint32)
        assert np.array_equal(c_bits, py_bits), f"logits differ at position {pos}"


@pytest.mark.parametrize("head_size", [2, 4, 6, 12])
def test_logits_bit_exact_at_other_head_sizes(driver, tmp_path, head_size):
    """attention_head takes a score's terms four at a time (first, middle and last blocks, then what
    is left over): head sizes of one block, a remainder only, and three blocks."""
    n_heads = 4
    cfg = modelgen.ModelConfig(dim=head_size * n_heads, hidden_dim=40, n_layers=2, n_heads=n_heads, n_kv_heads=2,
                               vocab_size=64, seq_len=16)
    path = tmp_path / f"h{head_size}.bin"
    path.write_bytes(im.write_image(modelgen.generate_model(cfg, seed=head_size), 8, 32))
    tokens = [1, 5, 9, 33, 2, 60]
    ref = QuantReference(path.read_bytes())
    lines = run(driver, "logits", path, *tokens).splitlines()
    for pos, (tok, line) in enumerate(zip(tokens, lines, strict=True)):
        c_bits = np.array([int(h, 16) for h in line.split()], dtype=np.uint32)
        assert np.array_equal(c_bits, ref.forward(tok, pos).view(np.uint32)), f"logits differ at position {pos}"


@pytest.fixture(scope="module")
def kv8_images(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    d = tmp_path_factory.mktemp("kv8")
    out = {}
    for bits in (4, 8):
        out[bits] = d / f"model_q{bits}_kv8.bin"
        out[bits].write_bytes(im.write_image(builtin_model(), bits, 32, kv_cache="int8"))
    return out


@pytest.mark.parametrize("bits", [4, 8])
def test_int8_kv_cache_logits_bit_exact(driver, kv8_images, bits):
    """flags bit 1: k/v quantized per (position, KV head) in the firmware and in QuantReference."""
    path = kv8_images[bits]
    ref = QuantReference(path.read_bytes())
    assert ref.model.kv_cache == "int8"
    tokens = PROMPT + [100, 7, 300, 45, 46, 47]
    lines = run(driver, "logits", path, *tokens).splitlines()
    assert len(lines) == len(tokens)
    f32 = QuantReference(im.write_image(builtin_model(), bits, 32))
    differs = False
    for pos, (tok, line) in enumerate(zip(tokens, lines, strict=True)):
        c_bits = np.array([int(h, 16) for h in line.split()], dtype=np.uint32)
        logits = ref.forward(tok, pos)
        assert np.array_equal(c_bits, logits.view(np.uint32)), f"logits differ at position {pos}"
        differs |= not np.array_equal(logits, f32.forward(tok, pos))
    assert differs                              # the int8 cache really is in use


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("temperature,topp,seed", [(0.0, 0.9, 0), (0.8, 0.9, 1234)])
def test_int8_kv_cache_generation_matches_reference(driver, kv8_images, bits, temperature, topp, seed):
    path = kv8_images[bits]
    n = 40
    expected = QuantReference(path.read_bytes()).generate(PROMPT, n, seed=seed, temperature=temperature, topp=topp)
    got = run(driver, "gen", path, n, seed, f32_hex(temperature), f32_hex(topp), *PROMPT).split()
    assert [int(t) for t in got] == expected


def _near_ties(m: np.float32) -> list[np.float32]:
    """Values x in (0, m) next to a tie k + 1/2 of x / scale (scale = m / 127, within 3 ulps of it) that
    x * (1 / scale) rounds the other way (half away from zero); at most one per k."""
    scale = np.float32(m / np.float32(127))
    inv = np.float32(1) / scale
    out = []
    for k in range(1, 127):
        x = np.float32((k + 0.5) * float(scale))
        near = [x]
        for toward in (np.float32(0), m):
            y = x
            for _ in range(3):
                y = np.nextafter(y, toward)
                near.append(y)
        out += [y for y in near if np.floor(y / scale + np.float32(0.5)) != np.floor(y * inv + np.float32(0.5))][:1]
    return out


def test_quantize_act_bit_exact(driver):
    """quantize_act against the reference on vectors whose scales are normal, near the smallest normal
    and subnormal (where the clamp to [-127, 127] can act), with zero groups and padding."""
    rng = np.random.default_rng(3)
    vectors = []
    for magnitude in (1.0, 1e3, 1e-30, 127 * 2.0 ** -126, 2.0 ** -126, 1e-39, 1e-42, 1e-45):
        for n in (32, 40, 96, 172):
            v = (rng.standard_normal(n) * magnitude).astype(np.float32)
            if n == 96:
                v[32:64] = 0.0                                          # a group of zeros
            vectors.append(v)
    # maxabs where maxabs / 127 rounds to a subnormal with few bits: codes past 127 before the clamp
    vectors += [np.array([k * 2.0 ** -149 for k in range(1, 33)], dtype=np.float32) * s for s in (1, -1)]
    # values next to the ties k + 1/2 of x / scale, where x * (1 / scale) rounds the other way: the codes
    # tell the reciprocal rule from a divide per element
    m = np.float32(2.7293658)
    ties = _near_ties(m)
    assert len(ties) >= 8
    vectors.append(np.array([m, *ties], dtype=np.float32))
    stdin = "".join(" ".join(f"{int(u):08x}" for u in v.view(np.uint32)) + "\n" for v in vectors)
    lines = run(driver, "quant", 32, stdin=stdin).splitlines()
    assert len(lines) == 2 * len(vectors)
    clamped = 0
    for k, v in enumerate(vectors):
        q, scale = quantize_act(v, 32)
        assert [int(c) for c in lines[2 * k].split()] == q.ravel().tolist(), f"codes differ, vector {k}"
        assert [int(h, 16) for h in lines[2 * k + 1].split()] == scale.view(np.uint32).tolist()
        normal = scale >= np.float32(2.0 ** -126)
        g = v[: len(v) // 32 * 32].reshape(-1, 32)
        safe = np.where(scale[: len(g)] > 0, scale[: len(g)], np.float32(1))[:, None]
        with np.errstate(over="ignore"):
            fast = np.abs(g * (np.float32(1) / safe))
        assert (fast[normal[: len(g)]] < 127.5).all()                  # why the fast path needs no clamp
        clamped += int((np.abs(g / safe)[~normal[: len(g)]] >= 127.5).sum())
    assert clamped > 0                                                 # the clamped path ran
    q, scale = quantize_act(vectors[-1], 32)
    divided = np.floor(vectors[-1] / scale[0] + np.float32(0.5))
    assert (q.ravel()[: len(ties) + 1] != divided).sum() == len(ties)  # each tie rounds the other way


def test_math_bit_exact(driver):
    rng = np.random.default_rng(1)
    xs = np.concatenate([
        rng.uniform(-100, 100, 4000), rng.uniform(-1, 1, 2000), rng.uniform(0, 5000, 2000),
        rng.uniform(-5000, 0, 500), rng.uniform(-20000, 20000, 500), np.exp(rng.uniform(-80, 80, 2000)),
        [0.0, -0.0, 1.0, 2.0, 4.0, -80.0, -80.001, 88.0, 88.001, 1e-40, 3.4e38],
    ]).astype(np.float32)
    out = run(driver, "math", stdin="".join(f"{int(v):08x}\n" for v in xs.view(np.uint32)))
    got = np.array([[int(h, 16) for h in line.split()] for line in out.splitlines()], dtype=np.uint32)
    s, c = tw_sincosf(xs)
    assert np.array_equal(got[:, 0], tw_expf(xs).view(np.uint32))
    pos = xs >= 0
    assert np.array_equal(got[pos, 1], tw_sqrtf(xs[pos]).view(np.uint32))
    rope_range = np.abs(xs) < 20000  # sin/cos are defined for RoPE angles (pos * freq < seq_len)
    assert np.array_equal(got[rope_range, 2], s[rope_range].view(np.uint32))
    assert np.array_equal(got[rope_range, 3], c[rope_range].view(np.uint32))


# ------------------------------------------- quantization schemes: 2/3/4/8 bits, sym/asym, mixed

# (bits, group size, symmetric): every width in both schemes, every group size somewhere
SCHEMES = [(2, 32, True), (2, 64, False), (3, 128, True), (3, 32, False), (4, 64, True), (4, 128, False),
           (8, 128, True), (8, 64, False)]
MIXED = im.QuantRecipe.make(3, 32, symmetric=False, overrides={
    "tok_emb": im.QuantScheme(8, 32, True), "wq": 2, "w2": 4, "w1.0": im.QuantScheme(8, 128, False)})


def _scheme_id(s: tuple[int, int, bool] | str) -> str:
    return s if isinstance(s, str) else im.QuantScheme(*s).label


@pytest.fixture(scope="module")
def scheme_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("schemes")
    recipes = {_scheme_id(s): im.QuantRecipe.make(s[0], s[1], s[2]) for s in SCHEMES}
    recipes["mixed"] = MIXED
    out = {}
    for name, recipe in recipes.items():
        out[name] = d / f"{name}.bin"
        out[name].write_bytes(im.write_image(builtin_model(), recipe=recipe))
    return out


@pytest.mark.parametrize("scheme", [*SCHEMES, "mixed"], ids=_scheme_id)
def test_quant_schemes_bit_exact(driver, scheme_images, scheme):
    path = scheme_images[_scheme_id(scheme)]
    ref = QuantReference(path.read_bytes())
    tokens = PROMPT + [100, 7, 300]
    lines = run(driver, "logits", path, *tokens).splitlines()
    assert len(lines) == len(tokens)
    for pos, (tok, line) in enumerate(zip(tokens, lines, strict=True)):
        c_bits = np.array([int(h, 16) for h in line.split()], dtype=np.uint32)
        assert np.array_equal(c_bits, ref.forward(tok, pos).view(np.uint32)), f"logits differ at position {pos}"
    expected = ref.generate(PROMPT, 20, seed=9, temperature=0.9, topp=0.9)
    got = run(driver, "gen", path, 20, 9, f32_hex(0.9), f32_hex(0.9), *PROMPT).split()
    assert [int(t) for t in got] == expected


def test_mixed_image_really_mixes(scheme_images):
    qm = im.read_image(scheme_images["mixed"].read_bytes())
    encodings = {(t.bits, t.group_size, t.scheme) for t in qm.tensors.values() if t.bits != 32}
    assert encodings == {(8, 32, 0), (2, 32, 1), (4, 32, 1), (3, 32, 1), (8, 128, 1)}


# ------------------------------------------------------------- validation


def open_status(driver: Path, tmp_path: Path, data: bytes, partition: int | None = None,
                arena: int = 1 << 20) -> dict[str, str]:
    p = tmp_path / "img.bin"
    p.write_bytes(data)
    fields = run(driver, "open", p, partition or len(data), arena).split()
    return dict(zip(fields[0::2], fields[1::2], strict=False))


def patched(data: bytes, offset: int, fmt: str, value: int, crc: bool = True) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return im.fix_crc(bytes(b)) if crc else bytes(b)


def entry_offset(data: bytes, kind: im.Kind, layer: int = 0) -> int:
    n = struct.unpack_from("<I", data, 72)[0]
    for i in range(n):
        off = im.HEADER_SIZE + i * im.ENTRY.size
        if data[off] == kind and struct.unpack_from("<H", data, off + 4)[0] == layer:
            return off
    raise KeyError(kind)


def test_open_ok_reports_image_and_arena(driver, images, tmp_path):
    data = images[(8, 32)].read_bytes()
    st = open_status(driver, tmp_path, data)
    assert st["status"] == "0"
    assert int(st["crc"], 16) == im.read_image(data).crc
    assert int(st["size"]) == len(data)
    assert st["name"] == builtin_model().config.name
    needed = int(st["needed"])
    assert int(st["used"]) == needed
    kv_cache = 2 * 5 * 64 * 32 * 4
    assert kv_cache < needed < kv_cache + 16 * 1024
    assert open_status(driver, tmp_path, data, arena=needed)["status"] == "0"
    no_ram = open_status(driver, tmp_path, data, arena=needed - 1)
    assert no_ram["status"] == str(im.E_NO_RAM) and int(no_ram["needed"]) == needed


def corruptions(data: bytes) -> dict[str, tuple[int, bytes, int | None]]:
    wq = entry_offset(data, im.Kind.WQ, 2)
    norm = entry_offset(data, im.Kind.FFN_NORM, 1)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    return {
        "bad magic": (im.E_BAD_MAGIC, patched(data, 0, "<I", 0x12345678, crc=False), None),
        "empty partition": (im.E_BAD_MAGIC, data, 8),
        "version": (im.E_VERSION, patched(data, 4, "<H", 2, crc=False), None),
        "partition too small": (im.E_TOO_LARGE, data, len(data) - 4),
        "total size absurd": (im.E_TOO_LARGE, patched(data, 8, "<I", 0xFFFFFFF0, crc=False), None),
        "crc": (im.E_CRC, bytes(flipped), None),
        "shape": (im.E_CORRUPT, patched(data, wq + 8, "<I", 63), None),
        "data offset out of range": (im.E_CORRUPT, patched(data, wq + 16, "<I", len(data) - 4), None),
        "data size": (im.E_CORRUPT, patched(data, wq + 20, "<I", 64 * 64 - 4), None),
        "missing tensor": (im.E_CORRUPT, patched(data, 72, "<I", 9 * 5 + 2), None),
        "duplicate tensor": (im.E_CORRUPT, patched(data, wq + 4, "<H", 1), None),
        "header dims": (im.E_CORRUPT, patched(data, 32, "<I", 7), None),
        "unknown flag": (im.E_CORRUPT, patched(data, 48, "<I", 1 | 2 | 4), None),
        "arch": (im.E_ARCH, patched(data, 16, "<I", 2), None),
        "bits": (im.E_QUANT, patched(data, wq + 1, "<B", 5), None),
        "group size": (im.E_QUANT, patched(data, wq + 6, "<H", 16), None),
        "scheme": (im.E_QUANT, patched(data, wq + 2, "<B", 2), None),
        "vector scheme": (im.E_QUANT, patched(data, norm + 2, "<B", 1), None),
        "asymmetric without zero points": (im.E_CORRUPT, patched(data, wq + 2, "<B", 1), None),
        "3-bit size": (im.E_CORRUPT, patched(data, wq + 1, "<B", 3), None),
    }


@pytest.mark.parametrize("case", [
    "bad magic", "empty partition", "version", "partition too small", "total size absurd", "crc", "shape",
    "unknown flag",
    "data offset out of range", "data size", "missing tensor", "duplicate tensor", "header dims", "arch",
    "bits", "group size", "scheme", "vector scheme", "asymmetric without zero points", "3-bit size"])
def test_open_error_codes(driver, images, tmp_path, case):
    data = images[(8, 32)].read_bytes()
    code, bad, partition = corruptions(data)[case]
    assert open_status(driver, tmp_path, bad, partition)["status"] == str(code)
    with pytest.raises(im.ImageError) as e:
        im.read_image(bad, partition)
    assert e.value.code == code


# ------------------------------------------------------ cross-compilation


@pytest.mark.parametrize("target", list(CROSS))
def test_cross_compiles_without_warnings(target, tmp_path):
    cc, *flags = CROSS[target]
    if not shutil.which(cc):
        pytest.skip(f"{cc} not installed")
    nm = cc.replace("gcc", "nm")
    defined: set[str] = set()
    undefined: dict[str, set[str]] = {}
    for src in [*SOURCES, *CROSS_KERNELS[target]]:
        obj = tmp_path / f"{src.parent.name}-{src.stem}.o"
        r = subprocess.run([cc, *flags, "-O2", "-ffp-contract=off", "-ffreestanding", *WARN, f"-I{RUNTIME}",
                            "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        defined |= set(subprocess.run([nm, "--defined-only", "-j", str(obj)], capture_output=True, text=True,
                                      check=True).stdout.split())
        undefined[f"{src.parent.name}/{src.name}"] = set(subprocess.run(
            [nm, "-u", "-j", str(obj)], capture_output=True, text=True, check=True).stdout.split())
    for name, syms in undefined.items():   # the runtime's own symbols, libgcc helpers (__*), and what gcc emits
        for sym in syms:
            if sym.startswith("__") or sym in {"memset", "memcpy", "memmove"}:
                continue
            assert sym in defined, f"{name} references {sym} (no libc/libm allowed)"
