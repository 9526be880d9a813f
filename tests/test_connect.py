"""Connection lifecycle on the wire (PROTOCOL.md section 3): the first two messages."""

import pytest_twisted
from conftest import TS


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
