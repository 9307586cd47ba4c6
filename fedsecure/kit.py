"""Participant kits: the folder each party starts from, sealed by the consortium CA.

A kit holds ``kit.toml`` (role, name, addresses, settings and the SHA-256 of every
other file), the CA certificate, the participant's certificate and private key, and
``kit.sig``: the CA's signature over ``kit.toml``. Loading verifies all of it and
refuses a tampered, incomplete or world-readable kit with a clear message, so a
participant never starts on a kit it cannot trust.

Trust anchor: whoever can rewrite every file, the CA included, can forge a kit; pass
``ca_fingerprint`` (printed at provisioning) to pin the CA against that too.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fedsecure.crypto import pki, signing
from fedsecure.errors import CertificateError, KitError, SignatureError
from fedsecure.types import Role

# Format 2: the CKKS key pair is the key holder's own (`fedsecure keyholder-keygen`); a
# format-1 kit carries a context made by whoever provisioned, who held the secret once.
KIT_FORMAT = 2
KIT_TOML = "kit.toml"
KIT_SIG = "kit.sig"
CA_PEM = "ca.pem"
CERT_PEM = "cert.pem"
KEY_PEM = "key.pem"
DOMAIN_KIT = b"fedsecure/v1/kit"


@dataclass(frozen=True)
class Kit:
    """A verified participant kit, ready to start a server, key holder, client or admin."""

    path: Path
    role: Role
    name: str
    ca_cert: x509.Certificate
    cert: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    identity: pki.Identity
    server_address: str
    server_name: str
    keyholder_address: str
    keyholder_name: str
    settings: Mapping[str, Any]
    files: Mapping[str, str]

    @property
    def ca_pem(self) -> bytes:
        """The consortium CA certificate (PEM), the trust root for mTLS."""
        return pki.cert_pem(self.ca_cert)

    @property
    def cert_pem(self) -> bytes:
        """This participant's certificate (PEM)."""
        return pki.cert_pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        """This participant's private key (PEM); never leaves the process."""
        return pki.key_pem(self.private_key)

    def read_file(self, name: str) -> bytes:
        """Read an extra kit file (e.g. a CKKS context), checked against the signed digest."""
        if name not in self.files:
            raise KitError(f"{self.path}: kit lists no file {name!r}")
        data = (self.path / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != self.files[name]:
            raise KitError(f"{self.path}: {name} does not match the digest the CA signed (tampered?)")
        return data


def _write_private(path: Path, data: bytes) -> None:
    # Create with 0600 from the start (no window where the key is world-readable).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def write_kit(
    *,
    path: Path,
    role: Role,
    name: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    cert: x509.Certificate,
    addresses: Mapping[str, str],
    settings: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write one kit folder and seal it with the CA's signature. Refuses to overwrite.
    The private key is written 0600; loading refuses the kit if others can read it."""
    path.mkdir(parents=True, exist_ok=False)
    os.chmod(path, 0o700)
    contents: dict[str, bytes] = {CA_PEM: pki.cert_pem(ca_cert), CERT_PEM: pki.cert_pem(cert)}
    contents.update(extra_files or {})
    for fname, data in contents.items():
        (path / fname).write_bytes(data)
    secret = {KEY_PEM: pki.key_pem(key)}
    for fname, data in secret.items():
        _write_private(path / fname, data)
    digests = {fname: hashlib.sha256(data).hexdigest() for fname, data in {**contents, **secret}.items()}
    doc = {
        "kit": {"format": KIT_FORMAT, "role": role.value, "name": name, "private": sorted(secret),
                **dict(addresses)},
        "settings": dict(settings or {}),
        "files": dict(sorted(digests.items())),
    }
    toml_bytes = tomli_w.dumps(doc).encode()
    (path / KIT_TOML).write_bytes(toml_bytes)
    (path / KIT_SIG).write_bytes(signing.sign(ca_key, signing.canonical(DOMAIN_KIT, [toml_bytes])))
    return path


def load_kit(path: str | Path, *, expected_role: Role | None = None, ca_fingerprint: str | None = None) -> Kit:
    """Load and verify a kit; raise :class:`KitError` naming the problem on any failure."""
    root = Path(path)
    if not root.is_dir():
        raise KitError(f"{root}: kit folder does not exist")
    try:
        toml_bytes = (root / KIT_TOML).read_bytes()
        sig = (root / KIT_SIG).read_bytes()
        ca_bytes = (root / CA_PEM).read_bytes()
    except FileNotFoundError as exc:
        raise KitError(f"{root}: incomplete kit, missing {Path(exc.filename).name}") from exc
    ca_cert = _load_ca(root, ca_bytes, ca_fingerprint)
    try:
        signing.verify(ca_cert.public_key(), signing.canonical(DOMAIN_KIT, [toml_bytes]), sig, what="kit")
    except SignatureError as exc:
        raise KitError(f"{root}: kit.toml is not signed by the kit's CA (tampered kit refused)") from exc
    try:
        doc = tomllib.loads(toml_bytes.decode())
        meta, files = doc["kit"], doc["files"]
        role = Role(meta["role"])
        name = pki.check_name(meta["name"])
    except (KeyError, ValueError, tomllib.TOMLDecodeError) as exc:
        raise KitError(f"{root}: malformed kit.toml: {exc}") from exc
    if meta.get("format") != KIT_FORMAT:
        raise KitError(f"{root}: kit format {meta.get('format')!r} is not this fedsecure's format {KIT_FORMAT}; "
                       "re-provision the consortium (fedsecure keyholder-keygen, then fedsecure provision)")
    if expected_role is not None and role is not expected_role:
        raise KitError(f"{root}: this is a {role.value} kit, expected a {expected_role.value} kit")
    for fname, digest in files.items():
        try:
            data = (root / fname).read_bytes()
        except FileNotFoundError as exc:
            raise KitError(f"{root}: kit file {fname} is missing") from exc
        if hashlib.sha256(data).hexdigest() != digest:
            raise KitError(f"{root}: {fname} does not match the digest the CA signed (tampered kit refused)")
    for required in (CA_PEM, CERT_PEM, KEY_PEM):
        if required not in files:
            raise KitError(f"{root}: kit.toml does not list {required}")
    key_path = root / KEY_PEM
    for fname in {KEY_PEM, *meta.get("private", [])}:
        if stat.S_IMODE((root / fname).stat().st_mode) & 0o077:
            # Same rule as OpenSSH: a private key others can read is treated as leaked.
            raise KitError(f"{root / fname}: private file is accessible by group/others; run chmod 600")
    try:
        cert = pki.load_certificate((root / CERT_PEM).read_bytes())
        identity = pki.verify_issued_by(cert, ca_cert)
        key = pki.load_private_key(key_path.read_bytes())
    except (CertificateError, ValueError) as exc:
        raise KitError(f"{root}: {exc}") from exc
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise KitError(f"{root}: private key does not match the certificate")
    if identity.role is not role or identity.name != name:
        raise KitError(
            f"{root}: certificate names {identity.role.value}:{identity.name}, kit says {role.value}:{name}"
        )
    return Kit(
        path=root,
        role=role,
        name=name,
        ca_cert=ca_cert,
        cert=cert,
        private_key=key,
        identity=identity,
        server_address=str(meta.get("server_address", "")),
        server_name=str(meta.get("server_name", "server")),
        keyholder_address=str(meta.get("keyholder_address", "")),
        keyholder_name=str(meta.get("keyholder_name", "keyholder")),
        settings=MappingProxyType(dict(doc.get("settings", {}))),
        files=MappingProxyType(dict(files)),
    )


def _load_ca(root: Path, ca_bytes: bytes, ca_fingerprint: str | None) -> x509.Certificate:
    try:
        ca_cert = pki.load_certificate(ca_bytes)
        ca_cert.verify_directly_issued_by(ca_cert)  # self-signed root
    except Exception as exc:
        raise KitError(f"{root}: ca.pem is not a valid self-signed CA certificate: {exc}") from exc
    if ca_fingerprint is not None and pki.fingerprint(ca_cert) != ca_fingerprint.lower().replace(":", ""):
        raise KitError(f"{root}: CA fingerprint does not match the pinned one")
    return ca_cert
