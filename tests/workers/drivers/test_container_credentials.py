"""The spec's root password (a SHA-512 crypt hash) and SSH keys, applied to a new writable
layer: at create and rebuild, never over what the customer changed since."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from workers.drivers.base import DriverError

pytestmark = pytest.mark.root

SALT = "abcdefghijklmnop"
KEYS = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly0123456789abcdefghijk alice@laptop",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDfake bob")


def _hash(password: str) -> str:
    return subprocess.run(["openssl", "passwd", "-6", "-salt", SALT, password],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def provisioned(ct_driver, make_spec):
    spec = make_spec(root_password=_hash("s3cret"), ssh_keys=KEYS)
    ct_driver.create(spec)
    yield spec
    ct_driver.destroy(spec)


async def test_password_and_keys_are_in_place(provisioned, attach):
    console = await attach(provisioned.uuid)
    assert (await console.run("grep ^root: /etc/shadow | cut -d: -f2")).strip() == provisioned.root_password
    # the container's own crypt() agrees: su and sshd would accept the password
    assert (await console.run(f"mkpasswd -m sha512 s3cret {SALT}")).strip() == provisioned.root_password
    assert (await console.run("stat -c '%a %u %g' /etc/shadow")).strip() == "600 0 0"
    assert (await console.run("grep -c ^nobody: /etc/shadow /etc/passwd | tail -1")).strip().endswith(":1")
    assert (await console.run("cat /root/.ssh/authorized_keys")).splitlines() == list(KEYS)
    perms = await console.run("stat -c '%a %u %g' /root /root/.ssh /root/.ssh/authorized_keys")
    assert perms.splitlines() == ["700 0 0", "700 0 0", "600 0 0"]


async def test_a_password_changed_inside_survives_a_restart_and_rebuild_resets_it(
        provisioned, ct_driver, attach):
    console = await attach(provisioned.uuid)
    mine = _hash("changed-inside")
    await console.run(f"sed -i 's|^root:[^:]*:|root:{mine}:|' /etc/shadow")
    await asyncio.to_thread(ct_driver.stop, provisioned, timeout=5)
    await asyncio.to_thread(ct_driver.start, provisioned)
    console = await attach(provisioned.uuid)
    assert (await console.run("grep ^root: /etc/shadow | cut -d: -f2")).strip() == mine
    await asyncio.to_thread(ct_driver.rebuild, provisioned)
    console = await attach(provisioned.uuid)
    assert (await console.run("grep ^root: /etc/shadow | cut -d: -f2")).strip() == provisioned.root_password


def test_without_credentials_the_image_defaults_stay(container, ct_driver):
    from pathlib import Path

    pid = ct_driver.status(container.uuid).pid
    assert Path(f"/proc/{pid}/root/etc/shadow").read_text().startswith("root:*:")
    assert not Path(f"/proc/{pid}/root/root/.ssh").exists()


@pytest.mark.parametrize("fields, message", [
    ({"root_password": "s3cret"}, "SHA-512 crypt hash"),
    ({"root_password": "$1$abc$def"}, "SHA-512 crypt hash"),
    ({"ssh_keys": ("not a key",)}, "not an SSH public key"),
    ({"ssh_keys": ("ssh-ed25519 AAAA x\nssh-rsa AAAA injected",)}, "not an SSH public key"),
])
def test_bad_credentials_are_refused_without_leftovers(ct_driver, make_spec, leftovers, fields, message):
    spec = make_spec(**fields)
    with pytest.raises(DriverError, match=message):
        ct_driver.create(spec)
    assert leftovers(spec.uuid) == {}
