"""One driver per instance kind, built once per process for the host it serves."""

from __future__ import annotations

from functools import cache

from workers.drivers.base import Driver, DriverError, HostConfig

KINDS = ("container", "vm")


@cache
def get_driver(kind: str, host: HostConfig) -> Driver:
    if kind == "container":
        from workers.drivers.container.driver import ContainerDriver  # noqa: PLC0415

        return ContainerDriver(host)
    if kind == "vm":
        from workers.drivers.vm.driver import VmDriver  # noqa: PLC0415 (libvirt only when needed)

        return VmDriver(host)
    raise DriverError(f"Unknown instance kind {kind!r}.")
