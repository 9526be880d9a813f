"""TLS for those without a proxy in front: the certificate chain and private key (PEM files)
read into Twisted's CertificateOptions, with a one-line error naming the key when unusable."""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import ssl

from eformws.runtime.config import ConfigError

PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path} ({e.strerror})") from None


def tls_options(certificate_path: str, private_key_path: str) -> ssl.CertificateOptions:
    """Options for `server.tls_certificate` (the certificate, then any intermediates) and
    `server.tls_private_key` (may be the same file)."""
    blocks = PEM_CERTIFICATE.findall(_read("server.tls_certificate", certificate_path))
    if not blocks:
        raise ConfigError(f"server.tls_certificate: no PEM certificate in {certificate_path}")
    try:
        chain = [x509.load_pem_x509_certificate(block) for block in blocks]
    except ValueError:
        raise ConfigError(f"server.tls_certificate: {certificate_path} holds a certificate that cannot be read") from None
    try:
        key = serialization.load_pem_private_key(_read("server.tls_private_key", private_key_path), password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"server.tls_private_key: no usable PEM private key in {private_key_path}") from None
    options = ssl.CertificateOptions(privateKey=key, certificate=chain[0], extraCertChain=chain[1:])
    try:
        options.getContext()  # builds the context now, checking that key and certificate match
    except Exception:
        raise ConfigError("server.tls_private_key: the key does not match server.tls_certificate") from None
    return options
