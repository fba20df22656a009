"""Child processes that never outlive the host: an emulator (QEMU, a Verilator simulation) left
running after `twin` was terminated keeps a core at 100% forever, re-parented to init.

Two pieces, both small:

``spawn(cmd, **popen_kwargs) -> subprocess.Popen``
    ``subprocess.Popen(cmd, **popen_kwargs)``, except that on Linux the child is started with
    ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills it the moment its parent goes away, for
    whatever reason (SIGKILL, a crash, an uncaught exception).  Every Popen keyword works, including
    ``process_group=``/``start_new_session=`` (set up by subprocess before our hook runs) and a
    caller's own ``preexec_fn`` (called after ours).  Elsewhere (macOS) it is a plain Popen.

    **Threads.** The kernel's "parent" is the *thread* that forked the child: the child is killed when
    that thread exits, even if the process lives on.  So spawn from the thread that owns the child for
    its whole life — the main thread, or a worker that outlives it (not a short-lived pool task whose
    child another thread keeps using).  ``preexec_fn`` runs Python between fork and exec; spawn uses
    only a ctypes function pointer resolved at import, but like any preexec_fn it is not safe while
    *other* threads hold the interpreter's locks in odd states — spawn from the main thread when you can.

``exit_on_signals() -> restore``
    Installs SIGTERM and SIGHUP handlers (main thread only; elsewhere a no-op) that raise
    ``SystemExit(128 + signum)``, so ``with`` blocks and ``finally`` clauses run and kill their children
    the ordinary way (Ctrl-C already raises KeyboardInterrupt).  A second such signal during the
    clean-up is ignored, so the clean-up finishes.  Returns a function that puts the previous handlers
    back.  The CLI's entry point (twin.cli.main.main) calls it; PDEATHSIG covers what a handler cannot
    (SIGKILL of the host).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

__all__ = ["spawn", "exit_on_signals", "PDEATHSIG_SUPPORTED"]

_PR_SET_PDEATHSIG = 1


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.prctl
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


_prctl = _load_prctl()     # resolved once, here: the child only calls a function pointer
PDEATHSIG_SUPPORTED = _prctl is not None


_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


def _die_with_parent_hook(parent_pid: int, then: Callable[[], object] | None) -> Callable[[], None]:
    def hook() -> None:
        if _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(127)               # refuse to run unguarded
        if os.getppid() != parent_pid:  # the parent died between fork and prctl: no signal will come
            os._exit(1)
        if then is not None:
            then()
    return hook


def spawn(cmd: Sequence[str] | str, **popen_kwargs) -> subprocess.Popen:
    """Start ``cmd`` like ``subprocess.Popen(cmd, **popen_kwargs)``; the child is SIGKILLed by the
    kernel when the calling thread (hence the process) goes away (Linux PR_SET_PDEATHSIG).

    Where util-linux's ``setpriv`` is there (Debian's, always), the death signal is set by it just
    before it execs the command, and no Python runs between fork and exec: a ``preexec_fn`` can
    deadlock the child when other threads of this process hold locks at the fork (runs in threads,
    the host reference computing beside the emulator), which left an emulator that never started."""
    if _SETPRIV and not isinstance(cmd, (str, bytes)) and "preexec_fn" not in popen_kwargs:
        return subprocess.Popen([_SETPRIV, "--pdeathsig", "KILL", "--", *cmd], **popen_kwargs)
    if _prctl is not None:
        popen_kwargs["preexec_fn"] = _die_with_parent_hook(os.getpid(), popen_kwargs.get("preexec_fn"))
    return subprocess.Popen(cmd, **popen_kwargs)


def exit_on_signals(signals: Sequence[int] = (signal.SIGTERM, signal.SIGHUP)) -> Callable[[], None]:
    """SIGTERM/SIGHUP raise SystemExit(128 + signum) in the main thread; returns ``restore()``."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, object] = {}

    def handler(signum, frame) -> None:
        for s in signals:               # the clean-up that follows must not be interrupted again
            signal.signal(s, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    for s in signals:
        previous[s] = signal.signal(s, handler)

    def restore() -> None:
        if threading.current_thread() is threading.main_thread():
            for s, h in previous.items():
                signal.signal(s, h if h is not None else signal.SIG_DFL)
    return restore
