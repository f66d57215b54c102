"""pgdoorman.net.tls.client_tls: the tls_* settings checked together, and the SSLContext they give."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from pgdoorman.net.tls import TlsSetupError, client_tls
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
