"""Key material made locally: WireGuard (X25519) and TLS (ECDSA P-256) keys and CSRs (written
to 0600 files by core/files.py)."""

from __future__ import annotations

import base64
import binascii

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import NameOID

from hivemind_cluster.core.errors import InvalidInput

TlsKey = ec.EllipticCurvePrivateKey


def generate_wireguard_keypair() -> tuple[str, str]:
    """Return ``(private, public)`` as the base64 strings ``wg`` uses."""
    private = x25519.X25519PrivateKey.generate()
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(raw).decode(), base64.b64encode(public).decode()


def wireguard_public_key(private_b64: str) -> str:
    raw = base64.b64decode(private_b64)
    public = x25519.X25519PrivateKey.from_private_bytes(raw).public_key()
    return base64.b64encode(
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()


def check_wireguard_key(text: str) -> str:
    """Return ``text`` if it is a base64 32-byte WireGuard key, else raise InvalidInput."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32 or base64.b64encode(raw).decode() != text:
        raise InvalidInput("WireGuard public key must be 32 bytes in base64 (44 characters)")
    return text


def generate_tls_key() -> TlsKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: TlsKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_tls_key(pem: bytes) -> TlsKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidInput("TLS key must be an ECDSA key")
    return key


def build_csr(key: TlsKey, hostname: str) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)
