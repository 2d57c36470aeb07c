"""Channels to the gateway: the URL, TLS and the API key, shared by `Client` and `Worker`.

A URL is `http://host:port` (plaintext), `https://host:port` (TLS) or a bare
`host:port` (plaintext unless `tls` is given). The API key is not a channel
credential: grpcio refuses call credentials on a plaintext channel, and a
gateway on loopback or behind a TLS-terminating proxy is plaintext. It is sent
as `authorization: Bearer KEY` metadata on every call instead, which is what
the gateway checks (README "Security").
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc

__all__ = ["TLS", "Endpoint", "endpoint"]

# Keepalive pings notice a dead connection that carries no traffic (a watch
# waiting on a long ticket) without waiting for the OS; the gateway allows
# them (tonic's default policy accepts pings without calls in flight).
_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


@dataclass(frozen=True)
class TLS:
    """TLS settings. All None: the system's roots, no client certificate."""

    #: PEM of the CA(s) to trust instead of the system roots (a private CA).
    root_certificates: bytes | None = None
    #: PEM private key and certificate chain, for mutual TLS.
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    #: The name to check in the server's certificate, when it differs from the host.
    server_name: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect: resolved once, used for every channel."""

    target: str
    tls: TLS | None
    metadata: tuple[tuple[str, str], ...]

    def channel(self) -> grpc.aio.Channel:
        """A new `grpc.aio` channel (connects lazily)."""
        options = list(_OPTIONS)
        if self.tls is None:
            return grpc.aio.insecure_channel(self.target, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.tls.root_certificates,
            private_key=self.tls.private_key,
            certificate_chain=self.tls.certificate_chain,
        )
        if self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return grpc.aio.secure_channel(self.target, credentials, options=options)


def endpoint(url: str, api_key: str | None, tls: TLS | bytes | bool | None) -> Endpoint:
    """Resolves a URL, TLS choice and API key; ValueError on a URL that cannot work.

    `tls`: a `TLS`, the PEM bytes of the CA to trust (shorthand for
    `TLS(root_certificates=...)`), True (the system roots), or None/False
    (TLS only for `https://` URLs).
    """
    if isinstance(tls, (bytes, bytearray)):
        tls = TLS(root_certificates=bytes(tls))
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"invalid gateway URL {url!r}: the scheme must be http or https")
        if not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"invalid gateway URL {url!r}: expected http(s)://host:port")
        target = parts.netloc
        secure = parts.scheme == "https" or bool(tls)
    else:
        target = url
        secure = bool(tls)
    if not target:
        raise ValueError("invalid gateway URL: empty")
    if api_key is not None and (not api_key or any(ord(c) < 0x21 or ord(c) > 0x7E for c in api_key)):
        # A header value with control characters or spaces would be refused by grpcio at call time.
        raise ValueError("invalid API key: expected visible ASCII characters")
    settings = tls if isinstance(tls, TLS) else (TLS() if secure else None)
    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    return Endpoint(target, settings, metadata)
