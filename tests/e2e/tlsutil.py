"""Certificates for the TLS tests, made per run with `cryptography`: a CA,
server certificates for 127.0.0.1 and localhost, client certificates (CN,
OU, SANs), and a foreign CA whose certificates s3gate must refuse."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclasses.dataclass
class Issued:
    cert: Path
    key: Path
    serial: int


class Ca:
    """A CA that writes what it issues into `dir`."""

    def __init__(self, dir: Path, name: str):
        self.dir = dir
        dir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            self._builder(self.name, self.key.public_key(), now)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert = dir / f"{name.replace(' ', '-')}.pem"
        self.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject: x509.Name, public, now) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
        )

    def issue(
        self,
        file: str,
        cn: str,
        *,
        ous: tuple[str, ...] = (),
        sans: tuple[x509.GeneralName, ...] = (),
        server: bool = False,
        key=None,
    ) -> Issued:
        """A leaf certificate (and its key, new unless `key` is given) as
        `<file>.pem` and `<file>-key.pem`."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou) for ou in ous]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
        b = self._builder(x509.Name(attrs), key.public_key(), datetime.datetime.now(datetime.timezone.utc))
        b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        eku = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        out = Issued(self.dir / f"{file}.pem", self.dir / f"{file}-key.pem", cert.serial_number)
        out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out.key.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        return out

    def server(self, file: str, key=None) -> Issued:
        """A server certificate for localhost and 127.0.0.1."""
        sans = (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        return self.issue(file, "localhost", sans=sans, server=True, key=key)


def serial_of(der: bytes) -> int:
    return x509.load_der_x509_certificate(der).serial_number


def new_key():
    return ec.generate_private_key(ec.SECP256R1())


def uri(u: str) -> x509.GeneralName:
    return x509.UniformResourceIdentifier(u)
