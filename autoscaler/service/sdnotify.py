"""systemd's notify protocol (Type=notify): READY, STATUS, WATCHDOG, STOPPING.

Ten lines over a Unix datagram socket; the PyPI wrappers for it are unmaintained, and outside
systemd (no NOTIFY_SOCKET) every call is a cheap no-op.
"""

from __future__ import annotations

import os
import socket


class SystemdNotifier:
    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET")

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, **fields: str) -> bool:
        """`notify(READY="1", STATUS="...")`; returns whether systemd was told."""
        if not self.address:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, target)
            return True
        except OSError:
            return False

    @property
    def watchdog_interval_s(self) -> float | None:
        """systemd's WatchdogSec= as it handed it over (WATCHDOG_USEC), when it is meant for this process."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not self.address or not usec or not usec.isdigit() or int(usec) == 0:
            return None
        if pid and pid.isdigit() and int(pid) != os.getpid():
            return None
        return int(usec) / 1e6
