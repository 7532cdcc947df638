"""X.509 SVIDs for tests: CAs per trust domain and leaves whose only URI SAN
is a SPIFFE ID, signed with `cryptography` (trustme cannot put URI SANs), plus
the spiffe-helper file layout, Python ssl clients with deadlines and a wait
for the engine's TLS events."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.netutil import DEADLINE_S, wait_for

_ONE_DAY = dt.timedelta(days=1)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@dataclass
class Svid:
    cert_pem: str
    key_pem: str
    serial: int
    spiffe_id: str


class CA:
    """A self-signed root for one trust domain."""

    def __init__(self, trust_domain: str) -> None:
        self.trust_domain = trust_domain
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain} root")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - _ONE_DAY)
            .not_valid_after(_now() + 30 * _ONE_DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, path: str, *, expired: bool = False, uri: str | None = None, dns: tuple[str, ...] = (),
              subject: x509.Name | None = None) -> Svid:
        """An SVID for spiffe://<trust domain><path> (or exactly `uri`), valid now unless `expired`; `dns` names go
        into its subjectAltName after the URI, `subject` replaces the default O=SPIRE."""
        spiffe_id = uri if uri is not None else f"spiffe://{self.trust_domain}{path}"
        key = ec.generate_private_key(ec.SECP256R1())
        serial = x509.random_serial_number()
        if expired:
            start, end = _now() - 10 * _ONE_DAY, _now() - _ONE_DAY
        else:
            start, end = _now() - dt.timedelta(hours=1), _now() + 7 * _ONE_DAY
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject or x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIRE")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id),
                                                        *(x509.DNSName(name) for name in dns)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=True, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Svid(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key), serial, spiffe_id)


def _atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_svid_files(directory: Path, svid: Svid, bundle_pem: str) -> tuple[Path, Path, Path]:
    """The spiffe-helper layout (svid.pem, svid_key.pem, svid_bundle.pem), each replaced atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, bundle = directory / "svid.pem", directory / "svid_key.pem", directory / "svid_bundle.pem"
    _atomic_write(cert, svid.cert_pem)
    _atomic_write(key, svid.key_pem, 0o600)
    _atomic_write(bundle, bundle_pem)
    return cert, key, bundle


def _load_svid(ctx: ssl.SSLContext, svid: Svid) -> None:
    with tempfile.TemporaryDirectory() as d:
        cert, key = Path(d) / "c.pem", Path(d) / "k.pem"
        cert.write_text(svid.cert_pem)
        key.write_text(svid.key_pem)
        ctx.load_cert_chain(cert, key)


def client_context(svid: Svid | None, bundle_pem: str) -> ssl.SSLContext:
    """A Python client context that trusts bundle_pem, checks no host name (SPIFFE IDs are URIs) and
    presents svid when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=bundle_pem)
    if svid is not None:
        _load_svid(ctx, svid)
    return ctx


def server_context(svid: Svid, bundle_pem: str) -> ssl.SSLContext:
    """A Python server context presenting svid that requires a client certificate verifying against bundle_pem."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=bundle_pem)
    _load_svid(ctx, svid)
    return ctx


def peer_spiffe_id(sock: ssl.SSLSocket) -> str:
    """The URI SAN of the verified peer's certificate."""
    cert = sock.getpeercert()
    assert cert, "no verified peer certificate"
    uris = [value for kind, value in cert.get("subjectAltName", ()) if kind == "URI"]
    assert len(uris) == 1, cert
    return str(uris[0])


def tls_connect(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
    try:
        return ctx.wrap_socket(raw, server_hostname=None)
    except BaseException:
        raw.close()
        raise


def peer_serial(sock: ssl.SSLSocket) -> int:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def cert_sha256(cert_pem: str) -> str:
    """Hex SHA-256 of the (first) PEM certificate's DER form: what x-forwarded-client-cert's Hash carries."""
    return x509.load_pem_x509_certificate(cert_pem.encode()).fingerprint(hashes.SHA256()).hex()


class HasTlsEvents(Protocol):
    def tls_events(self) -> list[dict[str, object]]: ...


def wait_event(eng: HasTlsEvents, acc: list[dict[str, Any]], pred: Callable[[dict[str, Any]], bool], what: str
               ) -> dict[str, Any]:
    """The first TLS event of eng (drained into acc, which keeps what earlier waits drained) matching pred."""
    found: list[dict[str, Any]] = []

    def check() -> bool:
        acc.extend(eng.tls_events())
        found[:] = [e for e in acc if pred(e)]
        return bool(found)

    wait_for(check, what=what)
    return found[0]
