"""Issue 8: never silently wrong, never a traceback, never a lost row.

Signals end the real `twin` CLI running a real QEMU; failed writes are real (RLIMIT_FSIZE makes a
write fail with EFBIG like a full disk); corrupt caches are real files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TWIN = str(Path(sys.executable).with_name("twin"))


# --------------------------------------------------------------------------- A: signals


def _stat(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, ppid) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    state, ppid = raw[raw.rindex(")") + 2:].split()[:2]
    return comm, state, int(ppid)


def _qemu_children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st and st[2] == pid and st[0].startswith("qemu-system") and st[1] != "Z":
                out.append(int(entry))
    return out


def _running(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] not in ("Z", "X")


def _wait_for_qemu(proc: subprocess.Popen, timeout: float = 60.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, f"twin exited ({proc.returncode}) before QEMU was seen"
        kids = _qemu_children(proc.pid)
        if kids:
            return kids[0]
        time.sleep(0.05)
    raise AssertionError("QEMU did not start")


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=lambda s: s.name)
def test_emulator_never_outlives_twin(tmp_path, sig):
    """A long `twin bench --port qemu`: the signal ends twin, and its QEMU within seconds (SIGTERM and
    SIGHUP through the CLI's handlers: a clean exit 128+signum; SIGKILL through PR_SET_PDEATHSIG)."""
    cmd = [TWIN, "bench", "--port", "qemu", "--platform", "mps2-an386", "--model", "none",
           "--scale", "3000", "-o", str(tmp_path / "b.csv")]
    log = (tmp_path / "log").open("w+")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    qemu = None
    try:
        qemu = _wait_for_qemu(proc)
        time.sleep(0.3)                   # well inside the run
        assert _running(qemu)
        os.kill(proc.pid, sig)
        rc = proc.wait(timeout=10)
        end = time.monotonic() + 5
        while _running(qemu) and time.monotonic() < end:
            time.sleep(0.05)
        assert not _running(qemu), f"QEMU {qemu} still runs after {sig.name} to twin (exit {rc})"
        if sig != signal.SIGKILL:
            log.seek(0)
            text = log.read()
            assert rc == 128 + sig, (rc, text)
            assert "Traceback" not in text, text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if qemu is not None and _running(qemu):
            os.kill(qemu, signal.SIGKILL)
        log.close()


def test_spawn_child_dies_with_parent(tmp_path):
    """procguard.spawn in a parent that is SIGKILLed: the child (a sleep) goes too; process_group and a
    caller's preexec_fn still work."""
    script = (
        "import subprocess, sys, time\n"
        "from twin.procguard import spawn\n"
        "p = spawn(['sleep', '60'], process_group=0, preexec_fn=lambda: None)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        assert _running(child)
        assert os.getpgid(child) == child          # process_group=0 honoured
        parent.kill()
        parent.wait()
        end = time.monotonic() + 5
        while _running(child) and time.monotonic() < end:
            time.sleep(0.02)
        assert not _running(child)
    finally:
        if _running(child):
            os.kill(child, signal.SIGKILL)


# --------------------------------------------------------------------------- B: atomic outputs


def _limited(limit_bytes: int):
    """preexec_fn: files this process writes may not grow past ``limit_bytes`` (EFBIG, like a full disk;
    Python ignores SIGXFSZ, so the write fails instead of killing the process)."""
    import resource

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


def _twin(args: list[str], *, limit: int | None = None, env: dict | None = None, timeout: float = 300):
    return subprocess.run([TWIN, *args], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_limited(limit) if limit else None, env={**os.environ, **(env or {})})


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def _leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def test_image_on_a_full_disk_keeps_the_previous_image(tmp_path):
    """`twin image` of the built-in model (170 KB) where files may not exceed 100 KB: a one-line error,
    the previous image and its tokenizer byte for byte, no temporary left."""
    out = tmp_path / "m.twlm"
    r = _twin(["image", "--bits", "8", "-o", str(out)])          # the previous image, 8-bit
    assert r.returncode == 0, r.stderr
    before = out.read_bytes()
    tok_before = (tmp_path / "m.twlm.tokenizer.json").read_bytes()
    assert len(before) < 400_000
    r = _twin(["image", "--bits", "4", "-o", str(out)], limit=100 * 1024)
    assert "m.twlm" in _one_line_error(r)
    assert out.read_bytes() == before
    assert (tmp_path / "m.twlm.tokenizer.json").read_bytes() == tok_before
    assert _leftovers(tmp_path, {"m.twlm", "m.twlm.tokenizer.json"}) == []


def test_compare_chart_on_a_full_disk_keeps_the_previous_chart(tmp_path):
    out = tmp_path / "boards.png"
    out.write_bytes(b"previous chart")
    r = _twin(["compare", "--platforms", "nucleo-f746zg", "--json"])   # the counts cached: no QEMU below
    assert r.returncode == 0, r.stderr
    r = _twin(["compare", "--platforms", "nucleo-f746zg", "-o", str(out)], limit=2000)
    assert "boards.png" in _one_line_error(r)
    assert out.read_bytes() == b"previous chart"
    assert _leftovers(tmp_path, {"boards.png"}) == []


def test_quantize_chart_on_a_full_disk_keeps_the_previous_chart(tmp_path):
    text = tmp_path / "eval.txt"
    text.write_text("It is a truth universally acknowledged, that a single man in possession of a good "
                    "fortune, must be in want of a wife.")
    out = tmp_path / "q.png"
    out.write_bytes(b"previous chart")
    r = _twin(["quantize", "--bits", "4", "--eval", str(text), "--max-tokens", "16", "-o", str(out)],
              limit=2000)
    _one_line_error(r)
    assert out.read_bytes() == b"previous chart"
    assert _leftovers(tmp_path, {"q.png", "eval.txt"}) == []


def test_calibration_file_on_a_full_disk_keeps_the_previous_file(tmp_path):
    from calibration.dataset import save_dataset
    from calibration.synthetic import bench_dataset, default_hidden

    ds = tmp_path / "bench.csv"
    save_dataset(bench_dataset(default_hidden(seed=3), n_workloads=12, seed=5,
                               boards={"stm32f4-disco": [168_000_000]}), ds)
    out = tmp_path / "cal.json"
    out.write_text('{"previous": true}\n')
    r = _twin(["calibrate", str(ds), "-o", str(out)], limit=500)
    _one_line_error(r)
    assert out.read_text() == '{"previous": true}\n'
    assert _leftovers(tmp_path, {"cal.json", "bench.csv"}) == []


@pytest.mark.parametrize("case", ["directory", "missing-parent", "unwritable"])
def test_bad_output_paths_fail_before_the_work(tmp_path, case):
    from click.testing import CliRunner

    from twin.cli import main

    if case == "directory":
        out = tmp_path
    elif case == "missing-parent":
        out = tmp_path / "no" / "such" / "m.twlm"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere")
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        out = ro / "m.twlm"
    for args in (["image", "-o", str(out)],
                 ["compare", "--platforms", "nucleo-f746zg", "-o", str(out)]):
        started = time.monotonic()
        r = CliRunner().invoke(main, args)
        assert r.exit_code != 0 and r.exception is None or isinstance(r.exception, SystemExit), r.output
        assert "Traceback" not in r.output and str(out) in r.output, r.output
        assert len([ln for ln in r.output.splitlines() if ln.strip()]) <= 3, r.output
        assert time.monotonic() - started < 5


def test_atomic_helpers_leave_nothing_on_error(tmp_path):
    from twin import atomic

    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic.open_atomic(target) as f:
        f.write("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old" and _leftovers(tmp_path, {"f.txt"}) == []
    atomic.write_text(target, "new")
    atomic.write_bytes(tmp_path / "g.bin", b"\x00\x01")
    assert target.read_text() == "new" and (tmp_path / "g.bin").read_bytes() == b"\x00\x01"
    assert _leftovers(tmp_path, {"f.txt", "g.bin"}) == []
    with atomic.atomic_path(tmp_path / "c.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"png")
    assert (tmp_path / "c.png").read_bytes() == b"png"
    with pytest.raises(atomic.OutputPathError, match="is a directory"):
        atomic.check_output_path(tmp_path)
    with pytest.raises(atomic.OutputPathError, match="does not exist"):
        atomic.check_output_path(tmp_path / "x" / "y")


# --------------------------------------------------------------------------- C: corrupt caches


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A cache of its own (TWIN_CACHE) with the shared cache's plugin, so corrupting it hurts nobody."""
    import shutil

    from twin.build import cache_dir

    shared = cache_dir()
    cache = tmp_path / "cache"
    cache.mkdir()
    if (shared / "plugin").is_dir():
        shutil.copytree(shared / "plugin", cache / "plugin")
    monkeypatch.setenv("TWIN_CACHE", str(cache))
    return cache


def _run_json(*args) -> dict:
    import json

    from click.testing import CliRunner

    from twin.cli import main

    r = CliRunner().invoke(main, ["run", "--platform", "mps2-an386", "--tokens", "2", "--json", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.qemu
def test_torn_cached_elf_is_rebuilt(private_cache):
    import hashlib

    first = _run_json()
    elf = Path(first["firmware"]["elf"])
    assert elf.is_relative_to(private_cache)
    good = elf.read_bytes()
    elf.write_bytes(good[: len(good) // 2])          # a torn copy under the right name
    again = _run_json()
    assert again["matches_reference"] and again["tokens"] == first["tokens"]
    assert len(elf.read_bytes()) == len(good)
    digest = elf.with_name(elf.name + ".sha256").read_text().strip()
    assert hashlib.sha256(elf.read_bytes()).hexdigest() == digest


@pytest.mark.qemu
def test_corrupt_cached_model_image_is_rewritten(private_cache):
    first = _run_json()
    (image,) = (private_cache / "images").glob("*.twlm")
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF                     # one flipped byte: the firmware's CRC says E_CRC
    image.write_bytes(bytes(data))
    again = _run_json()
    assert again["matches_reference"] and again["tokens"] == first["tokens"]
    assert image.read_bytes() != bytes(data)
