"""Containers built from Linux namespaces, cgroups and a veth on the host bridge (no Docker/LXC).

See README.md in this directory for the names, the console protocol and how to run the tests.
"""

from workers.drivers.container.driver import ContainerDriver

__all__ = ["ContainerDriver"]
