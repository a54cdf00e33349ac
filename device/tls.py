"""TLS for the board agent (standard library ``ssl``): a certificate and key given, or a self-signed pair
made once with ``openssl`` and kept in the store. Clients trust an agent by its certificate's SHA-256
fingerprint (pinned, or remembered on first use as ssh does), not by a certificate authority."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .private import FILE_MODE, check_secret_file, make_dir

TLS_DIR = "tls"
CERT_FILE, KEY_FILE = "cert.pem", "key.pem"
_HEX = re.compile(r"^[0-9a-f]{64}$")


def fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate, as ``AB:CD:…`` (what ``openssl x509 -fingerprint
    -sha256`` prints)."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def normalize_fingerprint(text: str) -> str:
    """``text`` (64 hex digits, colons and case as you like, an optional ``SHA256:`` or ``sha256//``
    prefix) as ``AB:CD:…``; ValueError naming it otherwise."""
    bare = re.sub(r"^(sha256[:/]+)", "", text.strip().lower()).replace(":", "")
    if not _HEX.match(bare):
        raise ValueError(f"{text!r} is not a SHA-256 certificate fingerprint: pass the 64 hex digits the "
                         "agent prints at start (colons allowed)")
    return ":".join(bare[i:i + 2] for i in range(0, 64, 2)).upper()


def cert_fingerprint(cert: str | os.PathLike) -> str:
    """The fingerprint of the first certificate in a PEM file."""
    text = Path(cert).read_text(errors="replace")
    match = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)
    if not match:
        raise ValueError(f"{cert} holds no PEM certificate; pass the agent's certificate (--tls-cert)")
    return fingerprint(ssl.PEM_cert_to_DER_cert(match.group(0)))


@dataclass(frozen=True)
class ServerTLS:
    """What the agent serves TLS with: the context and its certificate's fingerprint."""

    context: ssl.SSLContext
    fingerprint: str


def server_tls(cert: str | os.PathLike, key: str | os.PathLike) -> ServerTLS:
    """A server context for ``cert`` and ``key``; ValueError (one line) when they cannot serve."""
    for path, what in ((cert, "--tls-cert"), (key, "--tls-key")):
        if not Path(path).is_file():
            raise ValueError(f"{what} {path} does not exist; pass a PEM file (or use --tls-self-signed)")
    check_secret_file(Path(key), "the TLS key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ValueError(f"cannot serve TLS with {cert} and {key} ({exc.reason or exc}); pass a PEM "
                         "certificate and its own private key") from None
    return ServerTLS(context, cert_fingerprint(cert))


@dataclass(frozen=True)
class TLSFiles:
    """Where the agent's certificate and key are: given (``--tls-cert``, ``--tls-key``), or both None for
    the store's own self-signed pair (``--tls-self-signed``)."""

    cert: Path | None = None
    key: Path | None = None

    def load(self, store: str | os.PathLike) -> ServerTLS:
        cert, key = (self.cert, self.key) if self.cert is not None else self_signed(store)
        return server_tls(cert, key)


def self_signed(store: str | os.PathLike) -> tuple[Path, Path]:
    """The store's own certificate and key (``tls/cert.pem``, ``tls/key.pem``), made with ``openssl`` on
    first use and kept, so that clients that pinned it keep trusting the agent across restarts."""
    folder = Path(store) / TLS_DIR
    cert, key = folder / CERT_FILE, folder / KEY_FILE
    if cert.is_file() and key.is_file():
        return cert, key
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ValueError("--tls-self-signed needs the `openssl` command, which this board lacks: install it "
                         "(apt install openssl), or make a pair elsewhere and pass --tls-cert and --tls-key")
    make_dir(folder)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        new_cert, new_key = Path(tmp) / CERT_FILE, Path(tmp) / KEY_FILE
        made = subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-sha256", "-days", "3650", "-subj", "/CN=faceprobe-agent", "-keyout", str(new_key),
             "-out", str(new_cert)], capture_output=True, text=True, timeout=60)
        if made.returncode != 0 or not new_key.is_file():
            last = (made.stderr.strip().splitlines() or ["no message"])[-1]
            raise ValueError(f"openssl could not make a certificate ({last}); make a pair elsewhere and pass "
                             "--tls-cert and --tls-key")
        for path in (new_key, new_cert):
            os.chmod(path, FILE_MODE)
        os.replace(new_key, key)  # the key first: a pair is complete once the certificate is there
        os.replace(new_cert, cert)
    return cert, key
