"""The daemon helper is idempotent: a second call finds everything running."""

from __future__ import annotations

import subprocess
import sys

import pytest

from workers.drivers.vm.daemons import LIBVIRT_SOCKET, ensure_daemons


@pytest.mark.vm
def test_ensure_is_idempotent():
    ensure_daemons()
    assert ensure_daemons() == []
    assert LIBVIRT_SOCKET.is_socket()
    out = subprocess.run([sys.executable, "-m", "workers.drivers.vm.daemons", "ensure"],
                         capture_output=True, text=True, check=True).stdout
    assert "already running" in out
