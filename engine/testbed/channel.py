"""Host side of the agent protocol (see agent.py): JSON lines over QEMU's chardev socket."""

from __future__ import annotations

import json
import select
import socket
import time
from pathlib import Path
from typing import Any


class ChannelClosed(Exception):
    """The socket ended: QEMU exited or closed the connection."""


class AgentChannel:
    """One connection to a VM's agent socket."""

    def __init__(self, path: Path, connect_timeout: float = 10.0) -> None:
        deadline = time.monotonic() + connect_timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    self.sock.close()
                    raise ChannelClosed(f"no agent socket at {path}") from None
                time.sleep(0.02)
        self._buf = b""
        self._next_id = 0

    def new_id(self) -> int:
        """A request id not used on this connection yet."""
        self._next_id += 1
        return self._next_id

    def send(self, message: dict[str, Any]) -> None:
        """Send one request."""
        try:
            self.sock.sendall((json.dumps(message) + "\n").encode())
        except OSError as exc:
            raise ChannelClosed(str(exc)) from None

    def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next message, or None when none arrived within `timeout` seconds.

        With `timeout` 0 only lines already received are returned (no socket read)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                return None
            try:
                data = self.sock.recv(65536)
            except OSError as exc:
                raise ChannelClosed(str(exc)) from None
            if not data:
                raise ChannelClosed("the agent socket closed")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            message: dict[str, Any] = json.loads(line)
        except ValueError:
            return {"id": None, "noise": line.decode(errors="replace")}
        return message

    def close(self) -> None:
        """Close the connection (the agent then kills this connection's commands)."""
        self.sock.close()
