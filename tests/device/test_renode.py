"""The Renode backend (twin/device/renode.py) without Renode: the opcode pattern tables against every
instruction of our own ELFs, the generated .repl / .resc parsed back against the platform files, and the
backend's control flow against a fake pyrenode3 that records the monitor commands and plays the firmware."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from fixtures.fake_renode import FakeRenode

from twin.device import renode
from twin.platforms import all_platforms, get_platform

EMULATED = [p for p in all_platforms().values() if p.emulator is not None and p.vector != "mve"]


def test_helium_platforms_are_refused_not_miscounted() -> None:
    with pytest.raises(renode.RenodeError, match="do not cover Helium"):
        renode.renode_platform(get_platform("mps3-an547"))


# --------------------------------------------------------------------------- opcode patterns


def _overlap(a: str, b: str) -> bool:
    return len(a) == len(b) and all(x == "x" or y == "x" or x == y for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("arch", ["arm", "riscv"])
def test_patterns_are_disjoint_named_and_within_renodes_limit(arch: str) -> None:
    pats = renode.opcode_patterns(arch)
    assert len(pats) <= 2048                                  # tlib's MAX_OPCODE_COUNTERS
    assert len({p.name for p in pats}) == len(pats)
    assert {p.cls for p in pats} <= set(renode.CLASSES)
    for i, a in enumerate(pats):
        assert len(a.bits) in ((32,) if arch == "arm" else (16, 32))
        for b in pats[i + 1:]:
            assert not _overlap(a.bits, b.bits), (a, b)     # first match = only match: Renode's order is moot
    if arch == "arm":                                         # 16-bit Thumb: canonical form, 16 leading zeros
        assert all((p.width == 2) == p.bits.startswith("0" * 16) for p in pats)


def test_pattern_subtraction_is_exact() -> None:
    a, b = "1xx0", "x10x"
    rest = renode._minus(a + "x" * 12, b + "x" * 12)
    for v in range(16):
        bits = f"{v:04b}" + "0" * 12
        in_a = all(x in ("x", y) for x, y in zip(a, bits[:4], strict=True))
        in_b = all(x in ("x", y) for x, y in zip(b, bits[:4], strict=True))
        hits = [r for r in rest if all(x in ("x", y) for x, y in zip(r, bits, strict=True))]
        assert len(hits) == (1 if in_a and not in_b else 0)


def _disassembly(elf: Path, arch: str):
    from twin.profile import isa

    out = subprocess.run(isa.objdump_command(elf, arch), capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        m = isa._LINE_RE.match(line)
        if m and not m.group(3).startswith("."):      # data in code (literal pools) never executes
            yield m.group(3), int("".join(m.group(2).split()), 16), isa.classify(m.group(3), arch)


@pytest.mark.parametrize("platform", EMULATED, ids=lambda p: p.id)
def test_every_instruction_of_our_elfs_counts_in_its_class_and_no_other(platform) -> None:
    from twin.device.build import BuildError, build_firmware
    from twin.profile import isa

    if shutil.which(isa.OBJDUMP[platform.arch]) is None:
        pytest.skip(f"{isa.OBJDUMP[platform.arch]} not installed (scripts/setup)")
    try:
        fw = build_firmware(platform)
    except BuildError as exc:
        pytest.skip(str(exc).splitlines()[0])
    wrong, seen = [], set()
    for mnemonic, opcode, cls in _disassembly(fw.elf, platform.arch):
        hits = [p for p in renode.opcode_patterns(platform.arch) if p.matches(opcode)]
        seen.add(cls)
        if [p.cls for p in hits] != [cls]:
            wrong.append(f"{mnemonic} {opcode:#x}: isa says {cls}, patterns {[p.name for p in hits]}")
    assert not wrong, "\n".join(wrong[:20])
    assert {"alu", "load", "store", "branch", "mul"} <= seen


def test_known_encodings() -> None:
    arm = {0x4770: "branch", 0xBF00: "other", 0xD101: "branch", 0xFB20_1004: "simd", 0xFBB0_F0F2: "div",
           0xEE30_0A01: "fp", 0xED10_6A01: "load", 0xE92D_41F0: "store", 0xF3BF_8F4F: "other",
           0xFB00_F002: "mul", 0xFA2F_F081: "simd", 0xB2C0: "alu"}
    rv = {0x8082: "branch", 0x9002: "other", 0x02550F33: "mul", 0x0262F533: "div", 0x00008067: "branch",
          0x00062583: "load", 0x00112623: "store", 0x34102573: "other", 0x4281: "alu"}
    for arch, table in (("arm", arm), ("riscv", rv)):
        for op, cls in table.items():
            p = renode.classify_opcode(op, arch)
            assert p is not None and p.cls == cls, (arch, hex(op), p)
    assert renode.classify_opcode(0xD101, "arm").cond and not renode.classify_opcode(0xE000, "arm").cond


# --------------------------------------------------------------------------- .repl and .resc


def parse_repl(text: str) -> dict[str, dict]:
    """name -> {"type", "at", key: value ...} for a Renode platform description."""
    out: dict[str, dict] = {}
    cur = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("//"):
            continue
        m = re.match(r"^(\w+):\s*([\w.]+)\s*@\s*(\S+)(?:\s+(\S+))?\s*$", line)
        if m:
            cur = out[m[1]] = {"type": m[2], "at": m[3], "address": int(m[4], 0) if m[4] else None}
            continue
        m = re.match(r"^\s+(\S+)\s*->\s*(\S+)$", line)           # an interrupt connection
        if m and cur is not None:
            cur.setdefault("irq", []).append((m[1], m[2]))
            continue
        m = re.match(r"^\s+(\w+):\s*(.+)$", line)
        assert m and cur is not None, f"unparsed line {line!r}"
        value = m[2].strip()
        cur[m[1]] = int(value, 0) if re.fullmatch(r"0x[0-9a-fA-F]+|\d+", value) else value.strip('"')
    return out


@pytest.mark.parametrize("pid", ["mps2-an386", "mps2-an500", "mps2-an505", "riscv32-virt", "rtl-ibex"])
def test_generated_repl_has_the_platform_files_memory_map_and_uart(pid: str) -> None:
    p = get_platform(pid)
    repl = parse_repl(renode.generate_repl(p))
    for name, region in (("code", p.flash), ("model", p.model), ("ram", p.ram)):
        assert repl[name]["type"] == "Memory.MappedMemory"
        assert (repl[name]["address"], repl[name]["size"]) == (region.origin, region.size)
    assert repl["uart"]["address"] == p.defines["UART_BASE"]
    if p.arch == "arm":
        assert repl["uart"]["type"] == "UART.CMSDK_APB_UART"
        assert repl["cpu"]["type"] == "CPU.CortexM" and repl["cpu"]["cpuType"] == p.core
        assert repl["nvic"]["address"] == 0xE000E000
    else:
        assert repl["uart"]["type"] == "UART.NS16550"
        assert repl["cpu"]["type"] == "CPU.RiscV32" and repl["cpu"]["cpuType"] == p.isa
    ends = sorted((r["address"], r["address"] + r["size"]) for n, r in repl.items() if n in ("code", "model", "ram"))
    assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:], strict=False))   # no window over another


def test_repl_refused_without_firmware() -> None:
    no_build = next(p for p in all_platforms().values() if not p.has_firmware and p.id not in renode.SHIPPED)
    with pytest.raises(renode.RenodeError, match="no firmware build"):
        renode.generate_repl(no_build)


def parse_resc(text: str) -> list[str]:
    """The commands of a .resc: comments and :header: lines dropped, a \"\"\"-string joined into its command."""
    cmds, buf = [], None
    for line in text.splitlines():
        if buf is not None:
            buf.append(line)
            if line.endswith('"""'):
                cmds.append("\n".join(buf))
                buf = None
            continue
        if not line.strip() or line.startswith(("#", ":")):
            continue
        if line.count('"""') == 1:
            buf = [line]
            continue
        cmds.append(line)
    assert buf is None
    return cmds


def _fake_elf(tmp_path: Path, arch: str, mark: int) -> Path:
    """A minimal ELF with a twin_mark symbol (what mark_address reads)."""
    import struct

    machine, arm = (40, True) if arch == "arm" else (243, False)
    strtab = b"\0twin_mark\0"
    shstr = b"\0.symtab\0.strtab\0.shstrtab\0"
    sym = struct.pack("<IIIBBH", 1, mark | (1 if arm else 0), 4, 0x12, 0, 1)
    syms = b"\0" * 16 + sym
    off_sym = 52
    off_str = off_sym + len(syms)
    off_shs = off_str + len(strtab)
    off_sh = (off_shs + len(shstr) + 3) & ~3
    body = syms + strtab + shstr
    body += b"\0" * (off_sh - 52 - len(body))
    sh = [b"\0" * 40,
          struct.pack("<10I", 1, 2, 0, 0, off_sym, len(syms), 2, 1, 4, 16),
          struct.pack("<10I", 9, 3, 0, 0, off_str, len(strtab), 0, 0, 1, 0),
          struct.pack("<10I", 17, 3, 0, 0, off_shs, len(shstr), 0, 0, 1, 0)]
    ident = b"\x7fELF\x01\x01\x01" + b"\0" * 9
    hdr = ident + struct.pack("<HHIIIIIHHHHHH", 2, machine, 1, 0, 0, off_sh, 0, 52, 0, 0, 40, 4, 3)
    path = tmp_path / f"fw-{arch}.elf"
    path.write_bytes(hdr + body + b"".join(sh))
    return path


@pytest.mark.parametrize("pid", ["mps2-an386", "stm32f4-disco", "riscv32-virt"])
def test_resc_loads_elf_image_console_counters_and_hook(tmp_path: Path, pid: str) -> None:
    p = get_platform(pid)
    elf = _fake_elf(tmp_path, p.arch, p.flash.origin + 0x1234)
    image = tmp_path / "model.twlm"
    image.write_bytes(b"x")
    cmds = parse_resc(renode.renode_script(p, elf, image, port=4444, counts="c.txt"))
    assert cmds[0] == "using sysbus" and cmds[1] == f'mach create "{pid}"' and cmds[-1] == "start"
    load = cmds[2]
    if pid in renode.SHIPPED:
        assert load == f"machine LoadPlatformDescription @{renode.SHIPPED[pid][0]}"
        uart = renode.SHIPPED[pid][1]
    else:
        assert load.startswith("machine LoadPlatformDescriptionFromString")
        repl = parse_repl(load.split('"""')[1])
        assert (repl["model"]["address"], repl["model"]["size"]) == (p.model.origin, p.model.size)
        uart = "sysbus.uart"
    assert f"sysbus LoadELF @{elf}" in cmds
    assert f"sysbus LoadBinary @{image} {p.model.origin:#x}" in cmds
    assert 'emulation CreateServerSocketTerminal 4444 "twin-console" false' in cmds
    assert f"connector Connect {uart} twin-console" in cmds
    installed = [re.match(r'sysbus\.cpu InstallOpcodeCounterPattern "(.+)" "([01x]+)"$', c) for c in cmds]
    installed = [(m[1], m[2]) for m in installed if m]
    assert installed == [(q.name, q.bits) for q in renode.opcode_patterns(p.arch)]
    assert cmds.index("sysbus.cpu EnableOpcodesCounting true") < cmds.index(
        next(c for c in cmds if "InstallOpcodeCounterPattern" in c))
    hook = next(c for c in cmds if "AddHook" in c)
    assert hook.startswith(f"sysbus.cpu AddHook {p.flash.origin + 0x1234:#x} ")
    assert "c.txt" in hook and "GetOpcodeCounter" in hook


def test_renode_script_cli(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from twin.cli.main import main

    out = tmp_path / "an386.resc"
    r = CliRunner().invoke(main, ["renode-script", "--platform", "mps2-an386", "-o", str(out), "--port", "5555"])
    if r.exit_code != 0 and "not found" in r.output:
        pytest.skip(r.output.strip())
    assert r.exit_code == 0, r.output
    cmds = parse_resc(out.read_text())
    assert 'emulation CreateServerSocketTerminal 5555 "twin-console" false' in cmds
    assert any(c.startswith("sysbus LoadBinary @") and c.endswith(f"{get_platform('mps2-an386').model.origin:#x}")
               for c in cmds)


# --------------------------------------------------------------------------- the backend against a fake pyrenode3


@pytest.fixture
def fake_renode(monkeypatch):
    """A FakeRenode (tests/fixtures/fake_renode.py: what is real, what is faked) as pyrenode3.wrappers."""
    fake = FakeRenode()
    pkg = types.ModuleType("pyrenode3")
    wrappers = types.ModuleType("pyrenode3.wrappers")
    wrappers.Monitor = lambda: fake
    pkg.wrappers = wrappers
    monkeypatch.setitem(sys.modules, "pyrenode3", pkg)
    monkeypatch.setitem(sys.modules, "pyrenode3.wrappers", wrappers)
    monkeypatch.delenv("TWIN_NO_RENODE", raising=False)
    yield fake
    if fake.server is not None:
        fake.server.close()


def fake_segments(snapshots: list[list[int]], arch: str) -> list[dict]:
    """The segments a run must report, computed here from the fake's snapshots (cumulative
    ExecutedInstructions, then one count per counter): differences of consecutive snapshots, each counter's
    class from its name (``alu.0``, ``branch.cond.0``), what no counter counted as "other"."""
    pats = renode.opcode_patterns(arch)
    out, prev = [], [0] * (len(pats) + 1)
    for snap in snapshots:
        d = [b - a for a, b in zip(prev, snap, strict=True)]
        prev = snap
        by_class = dict.fromkeys(renode.CLASSES, 0)
        for pat, n in zip(pats, d[1:], strict=True):
            by_class[pat.name.split(".")[0]] += n
        undecoded = d[0] - sum(d[1:])
        by_class["other"] += undecoded
        out.append({"total": d[0], "by_class": by_class, "undecoded": undecoded,
                    "fetch": sum(n * pat.width for pat, n in zip(pats, d[1:], strict=True)),
                    "unresolved": sum(n for pat, n in zip(pats, d[1:], strict=True) if ".cond." in pat.name)})
    return out


def _image(platform: str = "mps2-an386") -> Path:
    from twin.runner import RunSpec, model_image

    return model_image(RunSpec(platform=platform))[0]


def _reference(prompt: list[int], n: int) -> list[int]:
    from twin.model.image import read_image
    from twin.model.reference import QuantReference

    return QuantReference(read_image(_image().read_bytes())).generate(prompt, n)


def test_backend_runs_the_protocol_and_cuts_counts_at_the_marks(tmp_path: Path, fake_renode: FakeRenode) -> None:
    from twin.profile.counts import SegmentProfile, sum_profiles
    from twin.runner import backend_session

    p = get_platform("mps2-an386")
    elf = _fake_elf(tmp_path, "arm", 0x2000)
    image = _image()
    backend = renode.RenodeProcess(p, elf, image, timeout=60)
    with backend_session(backend, reply_timeout=30) as s:   # generous: CI builds the RTL boards beside it
        assert s.info.board == "mps2-an386" and len(s.boot_phases) == 1
        phases, result = s.device.run([1, 2, 3], 2)
        assert [ph.token for ph in phases[1:]] == _reference([1, 2, 3], 2) and result.n_tokens == 2
    cmds = fake_renode.commands
    order = [next(i for i, c in enumerate(cmds) if c.startswith(k)) for k in
             ("mach create", "machine LoadPlatformDescription @", "sysbus LoadELF", "sysbus LoadBinary",
              "emulation CreateServerSocketTerminal", "connector Connect sysbus.uart", "sysbus.cpu EnableOpcodesCounting",
              "sysbus.cpu AddHook 0x2000", "start", "pause", "emulation Clear")]
    assert order == sorted(order)
    assert f"sysbus LoadBinary @{image} {p.model.origin:#x}" in cmds
    assert fake_renode.names == [q.name for q in renode.opcode_patterns("arm")]
    segs = backend.segments()
    n_marks = 2 + 2 * 3                         # validate, prefill, 2 tokens: two marks each
    assert len(segs) == n_marks + 1 == 2 * (1 + 1 + 2) + 1 == len(fake_renode.snapshots)   # boot | phase | io | ...
    for seg, want in zip(segs, fake_segments(fake_renode.snapshots, "arm"), strict=True):
        assert (seg.total, seg.by_class, seg.undecoded) == (want["total"], want["by_class"], want["undecoded"])
        assert (seg.fetch_bytes, seg.branches_unresolved) == (want["fetch"], want["unresolved"])
        assert seg.total == sum(seg.by_class.values())
        assert seg.by_function == {} and seg.mem is None and "by_function" in seg.unavailable
    prof = [seg.as_profile(SegmentProfile) for seg in segs]
    assert sum_profiles(prof).total == sum(seg.total for seg in segs)
    assert backend.proc.poll() == 0 and not backend.alive()


def test_backend_silent_firmware_is_a_timeout_not_a_hang(tmp_path: Path, fake_renode: FakeRenode) -> None:
    from twin.device.qemu import EmulatorError
    from twin.runner import backend_session

    fake_renode.silent = True
    backend = renode.RenodeProcess(get_platform("mps2-an386"), _fake_elf(tmp_path, "arm", 0x2000), None, timeout=10)
    started = time.monotonic()
    with pytest.raises(EmulatorError, match="hung|no reply|did not"):
        with backend_session(backend, reply_timeout=0.5):
            pass
    assert time.monotonic() - started < 8
    assert backend.proc.poll() is not None and "emulation Clear" in fake_renode.commands


def test_a_refused_command_names_it(tmp_path: Path, fake_renode: FakeRenode) -> None:
    backend = renode.RenodeProcess(get_platform("riscv32-virt"), _fake_elf(tmp_path, "riscv", 0x80000100))
    backend._monitor = fake_renode
    with pytest.raises(renode.RenodeError, match="Renode refused `bogus`: There is no such command"):
        backend.execute("bogus")


# --------------------------------------------------------------------------- `twin run --emulator renode`


def _check_renode_report(report: dict, snapshots: list[list[int]], arch: str, n_tokens: int) -> None:
    """The report of a Renode run against the fake's own snapshots: tokens as the host reference, and
    the per-phase counts equal to the sums computed here (segment 2i+1 is phase i: validate, prefill,
    each decoded token)."""
    from twin.runner import REPORT_FIELDS

    assert report["emulator"] == "renode"
    assert report["matches_reference"] and report["tokens"] == report["reference_tokens"]
    assert len(report["tokens"]) == n_tokens
    segs = fake_segments(snapshots, arch)
    assert len(segs) == 2 * (2 + n_tokens) + 1
    phase = [segs[2 * i + 1] for i in range(2 + n_tokens)]
    ins = report["instructions"]
    assert ins["by_phase"] == {"validate": phase[0]["total"], "prefill": phase[1]["total"],
                               "decode": [s["total"] for s in phase[2:]]}
    assert ins["total"] == phase[1]["total"] + sum(s["total"] for s in phase[2:])
    assert ins["by_class"] == {c: sum(s["by_class"][c] for s in phase[1:]) for c in renode.CLASSES}
    assert ins["by_phase_class"]["prefill"] == phase[1]["by_class"]
    assert ins["by_phase_fetch_bytes"]["prefill"] == phase[1]["fetch"]
    assert ins["branches"]["unresolved"] == sum(s["unresolved"] for s in phase[1:])
    # what Renode cannot count is said, not invented
    assert report["unavailable"] == {REPORT_FIELDS[k]: why for k, why in renode.UNAVAILABLE.items()}
    assert report["functions"] == [] and report["memory_traffic"] is None
    assert ins["branches"]["not_taken"] is None and ins["by_phase_branches"]["decode"]["not_taken"] is None


def test_run_with_renode_checks_tokens_and_reports_the_phase_counts(fake_renode: FakeRenode) -> None:
    """twin.run with emulator="renode" end to end: the real firmware ELF built and loaded, the real
    protocol over pyserial socket://, the fake's firmware and counters (tests/fixtures/fake_renode.py)."""
    from twin.runner import RunSpec, run_with_dump

    report, dump = run_with_dump(RunSpec(platform="mps2-an386", tokens=3, emulator="renode", timeout=60))
    assert dump is None
    assert f"sysbus LoadELF @{report['firmware']['elf']}" in fake_renode.commands
    assert any(c.startswith("sysbus.cpu AddHook 0x") for c in fake_renode.commands)   # the real ELF's twin_mark
    _check_renode_report(report, fake_renode.snapshots, "arm", 3)


def test_twin_run_emulator_renode_cli_text_and_json(fake_renode: FakeRenode) -> None:
    import json

    from click.testing import CliRunner

    from twin.cli.main import main

    r = CliRunner().invoke(main, ["run", "--platform", "riscv32-virt", "--emulator", "renode", "--tokens", "2",
                                  "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output, parse_constant=lambda name: pytest.fail(f"{name} in --json output"))
    _check_renode_report(report, fake_renode.snapshots, "riscv", 2)
    fake_renode.server.close()
    fake_renode.__init__()                 # a fresh fake for the second run
    r = CliRunner().invoke(main, ["run", "--platform", "riscv32-virt", "--emulator", "renode", "--tokens", "2"])
    assert r.exit_code == 0, r.output
    assert "riscv32-virt (renode)" in r.output and "matches the host reference" in r.output
    for name in ("functions", "memory_traffic", "instructions.branches.not_taken"):
        assert f"unavailable {name}: " in r.output
    assert "top functions" not in r.output


def test_twin_run_renode_refusals_are_one_line_errors(fake_renode: FakeRenode) -> None:
    from click.testing import CliRunner

    from twin.cli.main import main

    cases = {("--platform", "mps2-an386", "--mem-traffic"): "--mem-traffic is not available with Renode",
             ("--platform", "mps3-an547"): "do not cover Helium",
             ("--platform", "nrf52840-dk"): "has no emulator model"}
    for args, message in cases.items():
        r = CliRunner().invoke(main, ["run", *args, "--emulator", "renode", "--tokens", "1"])
        assert r.exit_code == 1 and message in r.output and r.output.count("\n") == 1, r.output
    assert fake_renode.commands == []                     # refused before Renode was asked anything


def test_twin_run_renode_silent_firmware_is_a_timeout_not_a_hang(fake_renode: FakeRenode) -> None:
    from twin.device.qemu import EmulatorError
    from twin.runner import RunSpec, run

    fake_renode.silent = True
    started = time.monotonic()
    with pytest.raises(EmulatorError, match="The firmware is hung; Renode was killed"):
        run(RunSpec(platform="mps2-an386", tokens=1, emulator="renode", timeout=20, reply_timeout=0.5))
    assert time.monotonic() - started < 10


def test_twin_run_renode_without_pyrenode3_is_the_one_line_hint() -> None:
    """`twin` in another process, pyrenode3 made unloadable (TWIN_NO_RENODE: as on a machine without it)."""
    twin = str(Path(sys.executable).with_name("twin"))
    r = subprocess.run([twin, "run", "--platform", "mps2-an386", "--emulator", "renode", "--tokens", "1"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "TWIN_NO_RENODE": "1"})
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == f"Error: {renode.RENODE_HINT}"


def test_missing_pyrenode3_is_one_line_saying_how_to_get_it(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pyrenode3", None)
    monkeypatch.setitem(sys.modules, "pyrenode3.wrappers", None)
    with pytest.raises(renode.RenodeError) as exc:
        renode.RenodeProcess(get_platform("mps2-an386"), tmp_path / "x.elf").start()
    msg = str(exc.value)
    assert "\n" not in msg and "pyrenode3" in msg and "PYRENODE_PKG" in msg and "[renode]" in msg


def test_real_pyrenode3() -> None:
    reason = renode.available()
    if reason is not None:
        pytest.skip(f"Renode not installed here: {reason}")
    from twin.device.build import build_firmware
    from twin.runner import RunSpec, backend_session, run

    p = get_platform("mps2-an386")
    backend = renode.RenodeProcess(p, build_firmware(p).elf, None, timeout=120)
    with backend_session(backend, reply_timeout=60) as s:
        assert s.info.board == p.id
    assert len(backend.segments()) == 2 * len(s.boot_phases) + 1
    report = run(RunSpec(platform=p.id, tokens=2, emulator="renode", timeout=600, reply_timeout=120))
    assert report["matches_reference"] and report["instructions"]["by_phase"]["prefill"] > 0
