"""The calibration workloads on real QEMU: each micro-kernel's profile is dominated by the class it
targets, every workload's count is exactly affine in its iteration count, the LLM kernels compute the
same bits on Arm and RISC-V, and bad requests are clear errors."""

from pathlib import Path

import pytest

from twin.bench.workloads import MICRO, SOFT_FLOAT_HELPERS, WORKLOADS, get_workload, target_classes
from twin.device.build import build_firmware
from twin.device.protocol import DeviceError, ErrorCode, WorkloadDone, WorkloadRequest
from twin.platforms import get_platform
from twin.profile.counts import analyze, parse_dump, plugin_args
from twin.runner import emulator_session

PLATFORMS = ["mps2-an386", "riscv32-virt"]
STEPS = (1, 2, 3)            # iterations N, 2N, 3N of every workload


def _base(w) -> int:
    return max(1, w.default_iterations // 4)


@pytest.fixture(scope="module", params=PLATFORMS)
def profiled(request, tmp_path_factory):
    """Every workload at N, 2N and 3N iterations, in one emulator session with the plugin."""
    p = get_platform(request.param)
    fw = build_firmware(p)
    dump = tmp_path_factory.mktemp("wl") / f"{p.id}.dump"
    runs = [(w, k * _base(w)) for w in WORKLOADS for k in STEPS]
    with emulator_session(p, fw.elf, None, extra_args=tuple(plugin_args(fw.elf, dump))) as s:
        done = [s.device.workload(w.id, w.default_sizes[0], n) for w, n in runs]
    segments = analyze(parse_dump(dump), fw.elf, p.arch)
    assert len(segments) == 2 * (1 + len(runs)) + 1
    out = {}
    for i, ((w, n), (phase, reply)) in enumerate(zip(runs, done, strict=True)):
        assert (phase.kind, phase.index, reply.id, reply.iterations) == (4, w.id, w.id, n)
        assert reply.cycles == 0 == phase.cycles                  # QEMU has no cycle counter
        out.setdefault(w.name, []).append((segments[3 + 2 * i], reply))
    return p, out


@pytest.mark.qemu
@pytest.mark.parametrize("name", [w.name for w in WORKLOADS if w.family == MICRO])
def test_micro_kernel_is_dominated_by_its_class(profiled, name):
    platform, runs = profiled
    w = get_workload(name)
    seg = runs[name][-1][0]
    targets = target_classes(w, platform)
    if not targets:                                               # soft-float: libgcc's helpers
        in_helpers = sum(n for f, n in seg.by_function.items() if f in SOFT_FLOAT_HELPERS)
        assert in_helpers / seg.total >= 0.9, seg.by_function
        return
    share = sum(seg.by_class[c] for c in targets) / seg.total
    assert share >= 0.75, (targets, seg.by_class)
    assert seg.undecoded == 0


@pytest.mark.qemu
@pytest.mark.parametrize("name", [w.name for w in WORKLOADS])
def test_count_is_affine_in_iterations(profiled, name):
    platform, runs = profiled
    (a, _), (b, _), (c, _) = runs[name]
    if name == "fp" and not target_classes(get_workload(name), platform):
        # soft-float: the helpers' paths depend on the values, which change from one iteration to the next
        assert abs((c.total - b.total) - (b.total - a.total)) < 0.01 * a.total
        return
    for cls in a.by_class:                                        # exactly: every class, every step
        assert c.by_class[cls] - b.by_class[cls] == b.by_class[cls] - a.by_class[cls], cls
    overhead = 2 * a.total - b.total                              # the constant set-up in the bracket
    assert 0 <= overhead < 64 or get_workload(name).family != MICRO, overhead


@pytest.mark.qemu
def test_results_match_across_isas():
    """The runtime's kernels are bit-exact on every target; so are the portable micro-kernels."""
    skip = ("mac", "dsp", "load_flash")              # different code per ISA / no model image loaded
    checksums = []
    for pid in PLATFORMS:
        p = get_platform(pid)
        fw = build_firmware(p)
        with emulator_session(p, fw.elf, None) as s:
            checksums.append({w.name: s.device.workload(w.id, w.default_sizes[0], _base(w))[1].checksum
                              for w in WORKLOADS if w.name not in skip})
    assert checksums[0] == checksums[1]


@pytest.mark.qemu
def test_bad_workload_requests_are_clear_errors(tmp_path: Path):
    p = get_platform("mps2-an505")
    fw = build_firmware(p)
    with emulator_session(p, fw.elf, None) as s:
        cases = [(0x7777, 0, 1, "unknown workload id"),
                 (get_workload("load_sram").id, 100, 1, "multiple of 64"),
                 (get_workload("store_sram").id, 1 << 30, 1, "do not fit"),
                 (get_workload("matvec_q8").id, 0, 1, "rows << 16 | cols")]
        for wid, size, n, words in cases:
            with pytest.raises(DeviceError) as err:
                s.device.workload(wid, size, n)
            assert err.value.code == ErrorCode.E_ARGS and words in str(err.value)
        _, ok = s.device.workload(get_workload("alu").id, 0, 10)   # the link and the firmware are fine
        assert ok.iterations == 10
        _, zero = s.device.workload(get_workload("matvec_q4").id, 64 << 16 | 64, 0)
        assert zero.iterations == 0


def test_workload_messages_round_trip():
    req = WorkloadRequest(0x101, 172 << 16 | 64, 7)
    assert WorkloadRequest.unpack(req.pack()) == req and len(req.pack()) == 10
    done = WorkloadDone(0x101, 172 << 16 | 64, 7, 123456, 0xDEADBEEF)
    assert WorkloadDone.unpack(done.pack()) == done and len(done.pack()) == 18
