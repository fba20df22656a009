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
