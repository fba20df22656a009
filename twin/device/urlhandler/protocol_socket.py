"""``socket://HOST:PORT`` as pyserial opens it, without the 0.3 s pause pyserial's handler takes on
every close() ("in case of quick reconnects"): each session here connects to a fresh port of a
backend that has already exited, so the pause is pure wait (60% of a 16-token run's wall time)."""

from __future__ import annotations

import socket

from serial.urlhandler.protocol_socket import Serial as _PyserialSocket


class Serial(_PyserialSocket):
    def close(self) -> None:
        if not self.is_open:
            return
        if self._socket is not None:
            try:
                self._socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass               # the peer is gone already
            self._socket.close()
            self._socket = None
        self.is_open = False
