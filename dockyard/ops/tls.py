"""TLS for the main listener: `[http] tls_cert`, `tls_key` and, for mutual TLS, `tls_client_ca`."""

from __future__ import annotations

import ssl
from pathlib import Path

from registry.config import ConfigError, HttpSettings


def server_ssl_context(http: HttpSettings) -> ssl.SSLContext | None:
    """The listener's SSL context, or None for plain HTTP. Raises ConfigError naming the key."""
    if not http.tls_cert and not http.tls_key:
        if http.tls_client_ca:
            raise ConfigError("http.tls_client_ca needs http.tls_cert and http.tls_key")
        return None
    if not http.tls_cert or not http.tls_key:
        raise ConfigError("http.tls_cert and http.tls_key must be set together")
    for key in ("tls_cert", "tls_key", "tls_client_ca"):
        value = getattr(http, key)
        if value and not Path(value).is_file():
            raise ConfigError(f"http.{key}: no such file {value}")
    # Purpose.CLIENT_AUTH: a server-side context (modern defaults: TLS 1.2+, no compression).
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(http.tls_cert, http.tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"http.tls_cert/tls_key: cannot load {http.tls_cert} with {http.tls_key}: {exc}"
        ) from exc
    if http.tls_client_ca:
        try:
            context.load_verify_locations(cafile=http.tls_client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"http.tls_client_ca: cannot load {http.tls_client_ca}: {exc}"
            ) from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context
