from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hivemind_cluster.core.errors import CsrRejected, InvalidInput
from hivemind_cluster.core.keys import build_csr, generate_tls_key
from hivemind_cluster.core.names import HUB_SERVER_NAME
from hivemind_cluster.mesh.ca import (
    CertificateAuthority,
    check_csr,
    check_hostname,
    pin_of,
    verify_signature,
)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


def test_pin_is_sha256_of_the_der_certificate(ca: CertificateAuthority) -> None:
    der = ca.certificate.public_bytes(serialization.Encoding.DER)
    assert ca.pin == pin_of(der)
    assert len(ca.pin) == 43
    assert ca.pin != CertificateAuthority.create().pin


def test_save_and_load(tmp_path: Path, ca: CertificateAuthority) -> None:
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    (tmp_path / "ca.key").write_bytes(ca.key_pem)
    assert CertificateAuthority.load(tmp_path).pin == ca.pin


def test_node_certificate_binds_id_and_overlay_ip(ca: CertificateAuthority) -> None:
    key = generate_tls_key()
    csr = check_csr(build_csr(key, "worker-1"), "worker-1")
    issued = ca.sign_node(csr, "n0123456789", "100.64.0.7")
    cert = x509.load_pem_x509_certificate(issued.pem)
    cert.verify_directly_issued_by(ca.certificate)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "hivemind://node/n0123456789"
    ]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("100.64.0.7")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.serial_number == issued.serial
    assert cert.public_key() == key.public_key()


def test_server_certificate(ca: CertificateAuthority) -> None:
    pem, _ = ca.issue_server_certificate(["198.51.100.2", "hub.example"])
    san = (
        x509.load_pem_x509_certificate(pem)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert set(san.get_values_for_type(x509.DNSName)) == {HUB_SERVER_NAME, "hub.example"}
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("198.51.100.2")]


def signed_csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, cn: str) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def tampered_csr() -> bytes:
    """A CSR whose public key was swapped for another: the signature no longer matches."""
    good = x509.load_pem_x509_csr(build_csr(generate_tls_key(), "worker-1"))
    other = x509.load_pem_x509_csr(build_csr(generate_tls_key(), "worker-1"))
    der = good.public_bytes(serialization.Encoding.DER)
    good_spki = good.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    other_spki = other.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = x509.load_der_x509_csr(der.replace(good_spki, other_spki))
    return forged.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: b"", "empty"),
        (lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n", "not a PEM CSR"),
        (lambda: b"x" * 20000, "larger than"),
        (lambda: build_csr(generate_tls_key(), "someone-else"), "common name"),
        (lambda: signed_csr(rsa.generate_private_key(65537, 2048), "worker-1"), "P-256"),
        (lambda: signed_csr(ec.generate_private_key(ec.SECP384R1()), "worker-1"), "P-256"),
        (tampered_csr, "signature does not match"),
    ],
    ids=["empty", "garbage", "huge", "name-mismatch", "rsa", "p384", "key-mismatch"],
)
def test_bad_csrs_are_refused_specifically(make: Callable[[], bytes], message: str) -> None:
    with pytest.raises(CsrRejected, match=message):
        check_csr(make(), "worker-1")


@pytest.mark.parametrize("name", ["", "-bad", "a" * 64, "under_score", "a..b", "x" * 254])
def test_bad_hostnames(name: str) -> None:
    with pytest.raises(InvalidInput):
        check_hostname(name)


def test_signature_verification(ca: CertificateAuthority) -> None:
    key = generate_tls_key()
    issued = ca.sign_node(check_csr(build_csr(key, "w"), "w"), "n1", "100.64.0.2")
    signature = key.sign(b"message", ec.ECDSA(hashes.SHA256()))
    assert verify_signature(issued.pem, signature, b"message")
    assert not verify_signature(issued.pem, signature, b"other message")
