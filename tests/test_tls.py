"""TLS without a proxy: `server.tls_certificate` and `server.tls_private_key` (or the twistd
options) serve wss:// and https:// on the one port; unusable files stop start-up in a line."""

from __future__ import annotations

import ssl

import pytest_twisted
import websockets
from certificates import self_signed
from conftest import Client, aio
from processes import write_config

LOCKERS = "/ws/lockers"


def trusting(cert_path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert_path))
    return context


@pytest_twisted.ensureDeferred
async def test_wss_connection_is_served_with_the_configured_certificate(start_server, tmp_path):
    cert, key = self_signed(tmp_path)
    server = await start_server({"server.tls_certificate": str(cert), "server.tls_private_key": str(key)})
    session_id = await server.session()
    connection = await aio(websockets.connect(f"wss://localhost:{server.port}{LOCKERS}?sessionId={session_id}",
                                              ssl=trusting(cert)))
    client = Client(connection)
    assert (await client.recv())["type"] == "connection"
    await client.close()


@pytest_twisted.ensureDeferred
async def test_plain_websocket_to_a_tls_port_does_not_connect(start_server, tmp_path):
    cert, key = self_signed(tmp_path)
    server = await start_server({"server.tls_certificate": str(cert), "server.tls_private_key": str(key)})
    try:
        await aio(websockets.connect(f"ws://127.0.0.1:{server.port}{LOCKERS}", open_timeout=5))
    except Exception as e:  # the TLS side closes a connection that does not speak TLS
        assert not isinstance(e, AssertionError)
    else:
        raise AssertionError("a plain connection was served on the TLS port")


@pytest_twisted.ensureDeferred
async def test_tls_options_of_twistd_serve_wss(tmp_path, spawn):
    cert, key = self_signed(tmp_path)
    config = write_config(tmp_path)
    gateway = await spawn(["--config", str(config), "--tls-certificate", str(cert), "--tls-private-key", str(key)], tmp_path)
    assert "with TLS" in gateway.process.log
    connection = await aio(websockets.connect(f"wss://localhost:{gateway.port}{LOCKERS}", ssl=trusting(cert)))
    assert await Client(connection).closed() == (1008, "Authentication required")


@pytest_twisted.ensureDeferred
async def test_unreadable_certificate_stops_start_up_with_one_line_naming_the_key(tmp_path, spawn):
    config = write_config(tmp_path)
    process = spawn.raw(["--config", str(config), "--tls-certificate", str(tmp_path / "missing.pem"),
                         "--tls-private-key", str(tmp_path / "missing.pem")], tmp_path)
    code, _ = await process.ended()
    assert code == 1
    assert process.err.decode().strip().splitlines() == [
        f"eformws: configuration error: server.tls_certificate: cannot read {tmp_path / 'missing.pem'} "
        "(No such file or directory)"
    ]


@pytest_twisted.ensureDeferred
async def test_a_key_that_does_not_match_the_certificate_stops_start_up(tmp_path, spawn):
    cert, _ = self_signed(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, wrong_key = self_signed(other)
    config = write_config(tmp_path)
    process = spawn.raw(["--config", str(config), "--tls-certificate", str(cert), "--tls-private-key", str(wrong_key)],
                        tmp_path)
    code, _ = await process.ended()
    assert code == 1
    assert "server.tls_private_key: the key does not match server.tls_certificate" in process.err.decode()


@pytest_twisted.ensureDeferred
async def test_a_certificate_without_its_key_stops_start_up(tmp_path, spawn):
    cert, _ = self_signed(tmp_path)
    config = write_config(tmp_path)
    process = spawn.raw(["--config", str(config), "--tls-certificate", str(cert)], tmp_path)
    code, _ = await process.ended()
    assert code == 1
    assert "TLS needs both server.tls_certificate and server.tls_private_key" in process.err.decode()
