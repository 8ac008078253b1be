"""The hub's certificate authority: one ECDSA P-256 root that signs the enrollment server
certificate and every node's client certificate.

A node certificate binds the node id (URI SAN ``hivemind://node/<id>``, also the CN) and
its overlay IP (IP SAN). The pool (mutual TLS) trusts nothing else.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hivemind_cluster.core.errors import CsrRejected, InvalidInput
from hivemind_cluster.core.keys import TlsKey, generate_tls_key, load_tls_key, private_key_pem
from hivemind_cluster.core.names import CA_CERT, CA_KEY, HUB_SERVER_NAME, NODE_URI_PREFIX

# The name every client checks on the hub's server certificates (enrollment, pool).
NODE_CERT_DAYS = 365
SERVER_CERT_DAYS = 825
CA_DAYS = 3650
MAX_CSR_BYTES = 16 * 1024
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def check_hostname(hostname: str) -> str:
    if not _HOSTNAME.match(hostname):
        raise InvalidInput(f"hostname {hostname[:80]!r} is not a valid host name")
    return hostname


def pin_of(certificate_der: bytes) -> str:
    """The CA pin carried in join tokens: unpadded base64url of SHA-256 over the DER cert."""
    digest = hashlib.sha256(certificate_der).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class IssuedCertificate:
    pem: bytes
    serial: int
    not_after: datetime.datetime


class CertificateAuthority:
    def __init__(self, key: TlsKey, certificate: x509.Certificate) -> None:
        self.key = key
        self.certificate = certificate

    @classmethod
    def create(cls, common_name: str = "HiveMind hub CA") -> CertificateAuthority:
        key = generate_tls_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        key = load_tls_key((directory / CA_KEY).read_bytes())
        certificate = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        return cls(key, certificate)

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return private_key_pem(self.key)

    @property
    def pin(self) -> str:
        return pin_of(self.certificate.public_bytes(serialization.Encoding.DER))

    def _sign(
        self,
        subject_cn: str,
        public_key: ec.EllipticCurvePublicKey,
        sans: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        days: int,
    ) -> IssuedCertificate:
        now = _now()
        serial = x509.random_serial_number()
        not_after = now + datetime.timedelta(days=days)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        return IssuedCertificate(
            certificate.public_bytes(serialization.Encoding.PEM), serial, not_after
        )

    def issue_server_certificate(self, extra_names: list[str]) -> tuple[bytes, bytes]:
        """A server certificate for the hub's services: ``(cert_pem, key_pem)``."""
        key = generate_tls_key()
        sans: list[x509.GeneralName] = [x509.DNSName(HUB_SERVER_NAME)]
        for name in extra_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        issued = self._sign(
            HUB_SERVER_NAME,
            key.public_key(),
            sans,
            ExtendedKeyUsageOID.SERVER_AUTH,
            SERVER_CERT_DAYS,
        )
        return issued.pem, private_key_pem(key)

    def issue_client_certificate(self, node_id: str, overlay_ip: str) -> tuple[bytes, bytes]:
        """A client certificate with a fresh key (the hub's own, for its CLI and web UI)."""
        key = generate_tls_key()
        return self._sign_node_key(key.public_key(), node_id, overlay_ip).pem, private_key_pem(key)

    def sign_node(
        self, csr: x509.CertificateSigningRequest, node_id: str, overlay_ip: str
    ) -> IssuedCertificate:
        public_key = csr.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)  # checked by check_csr
        return self._sign_node_key(public_key, node_id, overlay_ip)

    def _sign_node_key(
        self, public_key: ec.EllipticCurvePublicKey, node_id: str, overlay_ip: str
    ) -> IssuedCertificate:
        """Bind a key to a node id (URI SAN, CN) and its overlay IP (IP SAN)."""
        sans: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(NODE_URI_PREFIX + node_id),
            x509.IPAddress(ipaddress.ip_address(overlay_ip)),
        ]
        return self._sign(
            node_id, public_key, sans, ExtendedKeyUsageOID.CLIENT_AUTH, NODE_CERT_DAYS
        )


def check_csr(csr_pem: bytes, hostname: str) -> x509.CertificateSigningRequest:
    """Parse and check a node's CSR; raise CsrRejected with the specific reason."""
    if not csr_pem:
        raise CsrRejected("certificate signing request is empty")
    if len(csr_pem) > MAX_CSR_BYTES:
        raise CsrRejected(f"certificate signing request is larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise CsrRejected("certificate signing request is not a PEM CSR") from None
    try:
        valid = csr.is_signature_valid
    except (InvalidSignature, ValueError):
        valid = False
    if not valid:
        raise CsrRejected("certificate signing request signature does not match its key")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise CsrRejected("certificate signing request key must be ECDSA P-256")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or names[0].value != hostname:
        raise CsrRejected(
            f"certificate signing request common name must be the hostname {hostname!r}"
        )
    return csr


def load_certificate(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def leave_message(node_id: str, unix_time: int) -> bytes:
    """What a node signs to deregister itself (proof of its certificate key)."""
    return f"hivemind-leave:{node_id}:{unix_time}".encode()


def verify_signature(certificate_pem: bytes, signature: bytes, message: bytes) -> bool:
    key = load_certificate(certificate_pem).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    try:
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
