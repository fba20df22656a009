"""What every device backend that is a child process shares (QEMU, the RTL harness): the host binds
and listens on the console's TCP socket itself and hands it to the child (so no other process can
take the port in between, and a client may connect before the child accepts), the child is spawned so
that it never outlives the host, and its stderr is kept for the error messages. A subclass says how
to start it (``command``) and which of its stderr lines are routine (``routine``).

Backends that are not a child process of ours (Renode in-process through pyrenode3, a flashed board)
own the console socket through a :class:`Relay` instead: the host connects to it and the backend
bridges the connection to what it drives."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable

from twin.device.procguard import spawn
from twin.platforms import Platform


class EmulatorError(RuntimeError):
    """A backend could not start, crashed, or had to be killed."""


class ProcessBackend:
    """One running backend process. Use as a context manager; ``url`` is what pyserial opens."""

    name = "the backend"

    def __init__(self, platform: Platform, timeout: float):
        self.platform = platform
        self.timeout = timeout
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._stderr = tempfile.TemporaryFile()
        self._closing_stderr = ""
        self.deadline = 0.0

    # ---- what a backend says about itself
    def command(self, listen_fd: int) -> list[str]:
        """The command line; the console is the already-listening socket ``listen_fd``."""
        raise NotImplementedError

    def routine(self, line: str) -> bool:
        """True for a stderr line that is routine, not part of an error message."""
        return False

    # ---- the lifecycle
    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def start(self):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            self.port = listener.getsockname()[1]
            cmd = self.command(listener.fileno())
            # spawn: the kernel kills the backend if this process dies (twin/device/procguard.py)
            self.proc = spawn(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
                              pass_fds=(listener.fileno(),))
        self.deadline = time.monotonic() + self.timeout
        return self

    def stderr_text(self) -> str:
        """Everything the backend wrote to stderr (also after the block has ended)."""
        if self._stderr.closed:
            return self._closing_stderr
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def stderr(self) -> str:
        """What the backend wrote to stderr, without its routine lines."""
        return "\n".join(x for x in self.stderr_text().splitlines() if not self.routine(x)).strip()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait for the guest to end the run; kill the backend if it does not."""
        try:
            return self.proc.wait(timeout=min(timeout, self.remaining() + 0.1))
        except subprocess.TimeoutExpired:
            self.kill()
            raise EmulatorError(f"{self.name} did not exit {timeout:.0f} s after the firmware was told to stop; "
                                f"killed it. {self.stderr()}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()
        self._closing_stderr = self.stderr_text()
        self._stderr.close()


class Relay:
    """A local socket the host opens (``socket://127.0.0.1:{port}``) and a thread that waits up to
    ``timeout`` s for the host to connect, then runs ``serve(host)`` (which bridges it and closes it)."""

    def __init__(self, serve: Callable[[socket.socket], None], name: str, timeout: float):
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1)
        self.port = self._listener.getsockname()[1]
        self._serve, self._timeout = serve, timeout
        self._thread = threading.Thread(target=self._accept, name=name, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self._listener.settimeout(max(0.1, self._timeout))
        try:
            host, _ = self._listener.accept()
        except OSError:            # timed out, or closed: nobody came
            return
        self._serve(host)

    def close(self) -> None:
        """No more connections (one that is being served goes on)."""
        self._listener.close()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout=timeout)
