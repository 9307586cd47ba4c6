"""The consortium PKI: one CA, one certificate per participant, the role inside it.

Every participant holds an ECDSA P-256 key and a certificate issued by the consortium
CA. The role (server, keyholder, client, admin) and the participant's name are written
into the certificate as a SAN URI ``urn:fedsecure:<role>:<name>``, so authorisation
never trusts anything the peer merely claims in a request.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsecure.errors import CertificateError
from fedsecure.types import Role

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_URI_PREFIX = "urn:fedsecure:"
DEFAULT_VALIDITY_DAYS = 365


@dataclass(frozen=True)
class Identity:
    """Who a certificate names: participant name, role, serial and SHA-256 fingerprint."""

    name: str
    role: Role
    serial: int
    fingerprint: str


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid participant name, else raise ValueError."""
    # fullmatch, not match with "$": "$" also matches before a trailing newline.
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"invalid participant name {name!r}: use 1-63 of [a-z0-9_-], starting with a letter or digit"
        )
    return name


def new_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key (the OS CSPRNG backs OpenSSL's key generation)."""
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def create_ca(
    *, name: str = "fedsecure-consortium-ca", validity_days: int = DEFAULT_VALIDITY_DAYS
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Create the consortium CA: a self-signed certificate that may sign leaves only."""
    key = new_private_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=validity_days))
        # path_length=0: the CA cannot mint intermediate CAs.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_certificate(
    *,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    name: str,
    role: Role,
    hosts: tuple[str, ...] = (),
    validity_days: int = DEFAULT_VALIDITY_DAYS,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Issue a leaf key and certificate for ``name`` in ``role``.

    Servers (server, key holder) get serverAuth and DNS/IP SANs for ``hosts``; every
    leaf gets clientAuth, since the server also calls the key holder as a client.
    """
    check_name(name)
    key = new_private_key()
    now = _now()
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(f"{_URI_PREFIX}{role.value}:{name}"),
        x509.DNSName(name),
    ]
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role in (Role.SERVER, Role.KEYHOLDER):
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def fingerprint(cert: x509.Certificate) -> str:
    """Hex SHA-256 fingerprint of a certificate's DER encoding."""
    return cert.fingerprint(hashes.SHA256()).hex()


def identity_of(cert: x509.Certificate) -> Identity:
    """Read (name, role) from the certificate's ``urn:fedsecure:`` SAN; raise if absent."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise CertificateError("certificate has no subjectAltName: no fedsecure role") from exc
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(_URI_PREFIX)]
    if len(uris) != 1:
        raise CertificateError(f"certificate must carry exactly one fedsecure role URI, found {len(uris)}")
    role_text, _, name = uris[0][len(_URI_PREFIX):].partition(":")
    try:
        role = Role(role_text)
        check_name(name)
    except ValueError as exc:
        raise CertificateError(f"malformed role URI {uris[0]!r}") from exc
    return Identity(name=name, role=role, serial=cert.serial_number, fingerprint=fingerprint(cert))


def verify_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> Identity:
    """Check ``cert`` was signed by ``ca_cert`` and is valid now; return its identity.

    Raises :class:`CertificateError` on any failure (fail closed).
    """
    try:
        cert.verify_directly_issued_by(ca_cert)
    except Exception as exc:  # ValueError, TypeError, InvalidSignature
        raise CertificateError(f"certificate is not issued by the consortium CA: {exc}") from exc
    now = _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CertificateError("certificate is expired or not yet valid")
    return identity_of(cert)


def load_certificate(pem: bytes) -> x509.Certificate:
    """Parse one PEM certificate, raising :class:`CertificateError` on junk."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise CertificateError(f"not a PEM certificate: {exc}") from exc


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM encoding of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM of a private key (written only at mode 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """Parse an EC private key from PEM."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("kit private key is not an EC key")
    return key
