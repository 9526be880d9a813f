"""Connection lifecycle on the wire (PROTOCOL.md section 3): the first two messages."""

import re

import pytest_twisted

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest_twisted.ensureDeferred
async def test_authenticated_client_gets_connection_then_room_joined(server):
    session_id = await server.session()
    client = await server.connect(f"/ws/lockers?sessionId={session_id}")
    connection = await client.recv()
    joined = await client.recv()
    assert list(connection) == ["type", "data", "timestamp"]
    assert connection["type"] == "connection"
    assert connection["data"]["namespace"] == "/ws/lockers"
    assert connection["data"]["authenticated"] is True
    assert TS.match(connection["timestamp"]) and TS.match(connection["data"]["timestamp"])
    assert joined == {"type": "room_joined", "data": {"room": "locker_updates"}, "timestamp": joined["timestamp"]}
    await client.close()
