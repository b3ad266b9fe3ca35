"""PROXY protocol headers (v1 text, v2 binary) and stdlib clients that send one before talking,
as HAProxy's ``send-proxy`` / ``send-proxy-v2`` do: tests of ``haproxy:`` listeners without a
proxy. The spec: https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt"""

from __future__ import annotations

import imaplib
import ipaddress
import poplib
import smtplib
import socket
import struct
from typing import Any, TypeVar

T = TypeVar("T")

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(
    source: str, source_port: int = 40000, dest: str = "127.0.0.1", dest_port: int = 25
) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    return f"PROXY {family} {source} {dest} {source_port} {dest_port}\r\n".encode()


def v2(
    source: str, source_port: int = 40000, dest: str = "127.0.0.1", dest_port: int = 25
) -> bytes:
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(dest)
    family = 0x11 if src.version == 4 else 0x21  # AF_INET / AF_INET6, STREAM
    body = src.packed + dst.packed + struct.pack("!HH", source_port, dest_port)
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


def v2_local() -> bytes:
    """A v2 LOCAL header: the proxy's own connection (a health check), no client address."""
    return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)


V1_UNKNOWN = b"PROXY UNKNOWN\r\n"


def connect(port: int, header: bytes, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(header)
    return sock


def proxied(
    cls: type[T], header: bytes = b"", source: str | None = None, connect_to: str | None = None
) -> type[T]:
    """``cls`` (one of the clients below) sending ``header`` first, from ``source``; to
    ``connect_to`` instead of the host name it is given (which TLS checks)."""
    attributes = {"proxy_header": header, "source": source, "connect_to": connect_to}
    return type(cls.__name__, (cls,), attributes)


def _open(client: Any, host: str, port: int, timeout: float | None) -> socket.socket:
    source = client.source
    address = (source, 0) if source is not None else None
    target = (client.connect_to or host, port)
    sock = socket.create_connection(target, timeout, source_address=address)
    header: bytes = client.proxy_header
    sock.sendall(header)  # before any TLS: the SSL classes wrap what this returns
    return sock


class SMTP(smtplib.SMTP):
    proxy_header = b""
    source: str | None = None
    connect_to: str | None = None

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return _open(self, host, port, timeout)


class SMTP_SSL(smtplib.SMTP_SSL, SMTP):  # as smtplib names it
    pass


class IMAP4(imaplib.IMAP4):
    proxy_header = b""
    source: str | None = None
    connect_to: str | None = None

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        return _open(self, self.host, self.port, timeout)


class IMAP4_SSL(imaplib.IMAP4_SSL):
    proxy_header = b""
    source: str | None = None
    connect_to: str | None = None

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        # imaplib's calls IMAP4._create_socket by name, not through super()
        sock = _open(self, self.host, self.port, timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


class POP3(poplib.POP3):
    proxy_header = b""
    source: str | None = None
    connect_to: str | None = None

    def _create_socket(self, timeout: float) -> socket.socket:
        return _open(self, self.host, self.port, timeout)


class POP3_SSL(poplib.POP3_SSL):
    proxy_header = b""
    source: str | None = None
    connect_to: str | None = None

    def _create_socket(self, timeout: float) -> socket.socket:
        # poplib's calls POP3._create_socket by name, not through super()
        sock = _open(self, self.host, self.port, timeout)
        return self.context.wrap_socket(sock, server_hostname=self.host)
