"""Loopback ports for servers the tests start.

A port the OS calls free now may be taken before the server meant for it
binds it (a Python service binds about a second after its port is picked)
or while that server restarts on it: by a server of another test process
(the two passes of `make test`, pytest-xdist workers), which was handed
the same free port. So every test process reserves each port it hands
out: an exclusive lock on a file named after the port, held until the
process exits (the OS drops it then, also after a crash). A port another
process holds is passed over.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from pathlib import Path

_RESERVATIONS = Path(tempfile.gettempdir()) / "chat-service-test-ports"
# The lock files this process holds open, so that its ports stay reserved.
_held: list[int] = []


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it) and reserved for
    this process: no other test process gets it from here."""
    _RESERVATIONS.mkdir(exist_ok=True)
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if _reserve(port):
            return port
    raise RuntimeError(f"no free port that another test process has not reserved ({_RESERVATIONS})")


def _reserve(port: int) -> bool:
    descriptor = os.open(_RESERVATIONS / str(port), os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return False
    _held.append(descriptor)
    return True
