"""Stock Autobahn|Python asyncio RawSocket clients for tests/test_wamp_rawsocket.py, in a process
of their own (txaio takes one framework per process): one asks for FlatBuffers (a serializer
the router does not speak) and is refused in the handshake; one joins with CBOR by ticket and
asks the meta API what it is. Prints one JSON line.
Usage: python asyncio_rawsocket.py PORT TICKET"""

import asyncio
import json
import sys

import txaio

txaio.use_asyncio()

from autobahn.asyncio.rawsocket import WampRawSocketClientFactory  # noqa: E402
from autobahn.asyncio.wamp import ApplicationSession  # noqa: E402
from autobahn.wamp.serializer import CBORSerializer, FlatBuffersSerializer  # noqa: E402
from autobahn.wamp.types import ComponentConfig  # noqa: E402


async def refused_flatbuffers(port: int) -> str:
    """What the client makes of the router's answer to a FlatBuffers handshake."""
    loop = asyncio.get_running_loop()
    errors = []
    factory = WampRawSocketClientFactory(lambda: ApplicationSession(ComponentConfig("eform")),
                                         serializer=FlatBuffersSerializer())
    transport, protocol = await loop.create_connection(factory, "127.0.0.1", port)
    protocol.protocol_error = lambda message: (errors.append(message), transport.close())  # the client's own report
    await asyncio.wait_for(protocol.is_closed, 10)
    [message] = errors
    return "refused: " + message.rsplit(" : ", 1)[-1] if "handshake error" in message else message


async def joined_cbor(port: int, ticket: str) -> dict:
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    class Session(ApplicationSession):
        def onConnect(self):
            self.join("eform", authmethods=["ticket"])

        def onChallenge(self, challenge):
            return ticket

        async def onJoin(self, details):
            described = await self.call("wamp.session.get", details.session) if details.authrole == "admin" else None
            done.set_result({"authrole": details.authrole,
                             "transport": described["transport"]["type"] if described else "rawsocket"})
            self.leave()

        def onDisconnect(self):
            if not done.done():
                done.set_exception(RuntimeError("disconnected before joining"))

    factory = WampRawSocketClientFactory(lambda: Session(ComponentConfig("eform")), serializer=CBORSerializer())
    await loop.create_connection(factory, "127.0.0.1", port)
    return await asyncio.wait_for(done, 10)


async def main(port: int, ticket: str) -> None:
    seen = {"flatbuffers": await refused_flatbuffers(port), "cbor": await joined_cbor(port, ticket)}
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
