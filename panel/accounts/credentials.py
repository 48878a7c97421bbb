"""Credentials customers give their instances: OpenSSH public keys (checked, fingerprinted)
and root passwords (kept only as a SHA-512 crypt hash, the form /etc/shadow takes)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import subprocess
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from django.core.exceptions import ValidationError

# What OpenSSH 9 accepts by default; ssh-dss is off there since 7.0 and gone in 9.8.
KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
MIN_RSA_BITS = 2048
MAX_KEY_CHARS = 16 * 1024
_COMMENT = re.compile(r"^[\x20-\x7e]*$")


@dataclass(frozen=True)
class PublicKey:
    key_type: str
    blob: str  # base64, as in the file
    comment: str
    fingerprint: str

    @property
    def line(self) -> str:
        """The key as one authorized_keys line."""
        return " ".join(filter(None, (self.key_type, self.blob, self.comment)))


def fingerprint(blob: bytes) -> str:
    """The SHA256 fingerprint exactly as ``ssh-keygen -l`` prints it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def parse_public_key(text: str) -> PublicKey:
    """Check that ``text`` is one OpenSSH public key of a type OpenSSH accepts.

    Raises ValidationError with a message meant for the person who pasted it.
    """
    text = (text or "").strip()
    if not text:
        raise ValidationError("Paste a public key.", code="required")
    if len(text) > MAX_KEY_CHARS:
        raise ValidationError("That is too long for a public key.", code="max_length")
    if "PRIVATE KEY" in text:
        raise ValidationError(
            "This is a private key: keep it secret. Paste the public key instead "
            "(the file that ends in .pub).", code="private",
        )
    if "\n" in text or "\r" in text:
        raise ValidationError("Paste one key, on one line.", code="lines")
    parts = text.split(None, 2)
    key_type = parts[0]
    if key_type not in KEY_TYPES:
        if key_type == "ssh-dss":
            raise ValidationError("DSA keys are no longer accepted by OpenSSH; use an Ed25519 key "
                                  "(ssh-keygen -t ed25519).", code="type")
        raise ValidationError(
            "This does not start like an OpenSSH public key (for example ssh-ed25519 AAAA…). "
            "Paste the contents of your .pub file, without options in front.", code="type",
        )
    if len(parts) < 2:
        raise ValidationError("The key itself is missing after its type.", code="invalid")
    comment = parts[2].strip() if len(parts) > 2 else ""
    if not _COMMENT.match(comment):
        raise ValidationError("The comment after the key may only hold printable ASCII.", code="invalid")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError("The key is not valid base64: was it cut short?", code="invalid") from None
    try:
        key = load_ssh_public_key(f"{key_type} {parts[1]}".encode())
    except (ValueError, UnsupportedAlgorithm):
        raise ValidationError(
            "The key is damaged or does not match its type: was it cut short when copied?",
            code="invalid",
        ) from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ValidationError(
            f"This RSA key has {key.key_size} bits; use at least {MIN_RSA_BITS} (or an Ed25519 key).",
            code="weak",
        )
    return PublicKey(key_type=key_type, blob=parts[1], comment=comment, fingerprint=fingerprint(blob))


def hash_root_password(password: str) -> str:
    """SHA-512 crypt (``$6$salt$hash``) with a random salt, from ``openssl passwd -6``.

    Python's crypt module is deprecated (gone in 3.13) and passlib is unmaintained; openssl is
    on every Debian host. The password goes through stdin, never the command line.
    """
    result = subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"], input=password.encode(), capture_output=True,
        timeout=10, check=False,
    )
    hashed = result.stdout.decode().strip()
    if result.returncode != 0 or not hashed.startswith("$6$"):
        raise RuntimeError(f"openssl passwd failed: {result.stderr.decode().strip()}")
    return hashed
