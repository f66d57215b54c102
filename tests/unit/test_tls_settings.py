"""pgdoorman.net.tls: the tls_* and server_tls_* settings checked together, and the SSLContexts they give."""

from __future__ import annotations

import hashlib
import ssl
import subprocess
from pathlib import Path

import pytest

from pgdoorman.net.tls import TlsSetupError, client_tls, end_point_data, server_tls
from tests.support.certs import Certs, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"), "someone")


def test_modes_and_context(certs: Certs) -> None:
    assert client_tls(None, None, None, None).context is None  # nothing configured: allow, no TLS offered
    assert client_tls("disable", certs.server_cert, certs.server_key, None).context is None
    allow = client_tls(None, certs.server_cert, certs.server_key, None)
    assert allow.mode == "allow" and not allow.required and allow.context is not None
    assert allow.context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert allow.context.verify_mode == ssl.CERT_NONE
    assert allow.context.options & ssl.OP_NO_TICKET and allow.context.num_tickets == 0
    assert allow.context.options & ssl.OP_NO_RENEGOTIATION
    req = client_tls("require", certs.server_cert, certs.server_key, None)
    assert req.required and req.context is not None and req.context.verify_mode == ssl.CERT_NONE
    full = client_tls("verify-full", certs.server_cert, certs.server_key, certs.ca)
    assert full.required and full.context is not None and full.context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize("args,key,text", [
    (("bogus", None, None, None), "tls_mode", "must be one of"),
    ((None, "CERT", None, None), "tls_private_key", "must be set together with tls_certificate"),
    ((None, None, "KEY", None), "tls_certificate", "must be set together with tls_private_key"),
    (("require", None, None, None), "tls_mode", "needs tls_certificate"),
    (("verify-full", "CERT", "KEY", None), "tls_ca_cert", "is required by tls_mode 'verify-full'"),
    ((None, "/nonexistent.crt", "KEY", None), "tls_certificate", "cannot read /nonexistent.crt"),
    ((None, "CERT", "/nonexistent.key", None), "tls_private_key", "cannot read /nonexistent.key"),
    ((None, "CERT", "CA", None), "tls_certificate", "cannot load certificate"),
    ((None, "CERT", "KEY", "/nonexistent-ca.crt"), "tls_ca_cert", "cannot read /nonexistent-ca.crt"),
    ((None, "CERT", "KEY", "KEY"), "tls_ca_cert", "cannot load CA bundle"),
])
def test_errors_name_the_key(certs: Certs, tmp_path: Path, args: tuple[str | None, ...], key: str, text: str) -> None:
    real = {"CERT": certs.server_cert, "KEY": certs.server_key, "CA": certs.ca}
    mode, cert, pkey, ca = (real.get(a, a) if a else a for a in args)
    with pytest.raises(TlsSetupError) as ei:
        client_tls(mode, cert, pkey, ca)
    assert ei.value.key == key and text in str(ei.value), str(ei.value)


def test_server_modes(certs: Certs) -> None:
    assert server_tls(None, None, None, None).mode == "allow"
    assert server_tls("disable", None, None, None).context is None
    for mode, first, required in (("allow", False, False), ("prefer", True, False), ("require", True, True)):
        st = server_tls(mode, None, None, None)
        assert (st.first, st.required) == (first, required)
        assert st.context is not None and st.context.verify_mode == ssl.CERT_NONE and not st.context.check_hostname
    ca = server_tls("verify-ca", certs.ca, None, None)
    assert ca.context is not None and ca.context.verify_mode == ssl.CERT_REQUIRED and not ca.context.check_hostname
    full = server_tls("verify-full", certs.ca, certs.client_cert, certs.client_key)
    assert full.context is not None and full.context.check_hostname and full.required
    assert full.context.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize("args,key,text", [
    (("sometimes", None, None, None), "server_tls_mode", "must be one of"),
    (("verify-ca", None, None, None), "server_tls_ca_cert", "is required by server_tls_mode 'verify-ca'"),
    (("require", None, "CERT", None), "server_tls_private_key", "must be set together"),
    (("require", "/nonexistent-ca.crt", None, None), "server_tls_ca_cert", "cannot read"),
    (("verify-ca", "KEY", None, None), "server_tls_ca_cert", "cannot load CA bundle"),
    (("require", None, "CERT", "CA"), "server_tls_certificate", "cannot load certificate"),
])
def test_server_errors_name_the_key(certs: Certs, args: tuple[str | None, ...], key: str, text: str) -> None:
    real = {"CERT": certs.client_cert, "KEY": certs.client_key, "CA": certs.ca}
    mode, ca, cert, pkey = (real.get(a, a) if a else a for a in args)
    with pytest.raises(TlsSetupError) as ei:
        server_tls(mode, ca, cert, pkey)
    assert ei.value.key == key and text in str(ei.value), str(ei.value)


def _self_signed(d: Path, name: str, *key_args: str, digest: str | None) -> str:
    """A self-signed certificate made by the openssl tool with this key and signature digest."""
    args = ["openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", f"/CN={name}", "-keyout",
            str(d / f"{name}.key"), "-out", str(d / f"{name}.crt"), *key_args]
    if digest:
        args.append(f"-{digest}")
    subprocess.run(args, check=True, capture_output=True)
    return str(d / f"{name}.crt")


@pytest.mark.parametrize("name,key_args,digest,hash_name", [
    ("rsa-sha256", ("-newkey", "rsa:2048"), "sha256", "sha256"),
    ("rsa-sha1", ("-newkey", "rsa:2048"), "sha1", "sha256"),  # MD5 and SHA-1 bind with SHA-256 (RFC 5929)
    ("rsa-sha512", ("-newkey", "rsa:2048"), "sha512", "sha512"),
    ("ec-sha384", ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"), "sha384", "sha384"),
    ("ed25519", ("-newkey", "ed25519"), None, None),  # no hash in its signature: no channel binding
])
def test_channel_binding_data_is_the_certificates_signature_hash(tmp_path: Path, name: str,
                                                                 key_args: tuple[str, ...], digest: str | None,
                                                                 hash_name: str | None) -> None:
    """tls-server-end-point as libpq computes it for the certificate it is shown (the DER, hashed with the
    signature's hash), the first certificate of the file when it holds a chain."""
    crt = _self_signed(tmp_path, name, *key_args, digest=digest)
    other = _self_signed(tmp_path, "other", "-newkey", "rsa:2048", digest="sha256")
    chain = tmp_path / "chain.crt"
    chain.write_text(Path(crt).read_text() + Path(other).read_text())
    der = ssl.PEM_cert_to_DER_cert(Path(crt).read_text())
    expected = hashlib.new(hash_name, der).digest() if hash_name else None
    assert end_point_data(crt) == expected
    assert end_point_data(str(chain)) == expected
    tls = client_tls(None, crt, str(tmp_path / f"{name}.key"), None)
    assert tls.end_point == expected
    assert client_tls(None, None, None, None).end_point is None
