"""Stock Autobahn|Python asyncio peers for tests/test_wamp_apps.py, in a process of their own
(txaio takes one framework per process): as tests/js/apps.js, a callee registers
app.py.add (with progressive results) and subscribes app.py.news; a caller publishes,
calls with progress, and calls a procedure nobody registered. Prints one JSON line.
Usage: python asyncio_apps.py URL CALLEE_TICKET CALLER_TICKET json|msgpack|cbor [CALLER_URL]
(the caller on CALLER_URL, another process of the deployment, when given)"""

import asyncio
import json
import sys

import txaio

txaio.use_asyncio()

from autobahn.asyncio.wamp import ApplicationSession  # noqa: E402
from autobahn.asyncio.websocket import WampWebSocketClientFactory  # noqa: E402
from autobahn.wamp.exception import ApplicationError  # noqa: E402
from autobahn.wamp.serializer import CBORSerializer, JsonSerializer, MsgPackSerializer  # noqa: E402
from autobahn.wamp.types import (  # noqa: E402
    CallOptions,
    CallResult,
    ComponentConfig,
    PublishOptions,
    RegisterOptions,
    SubscribeOptions,
)

SERIALIZERS = {"json": JsonSerializer, "msgpack": MsgPackSerializer, "cbor": CBORSerializer}


async def joined(url: str, ticket: str, serializer: str) -> ApplicationSession:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    gone = loop.create_future()

    class Session(ApplicationSession):
        def onConnect(self):
            self.join("eform", authmethods=["ticket"])

        def onChallenge(self, challenge):
            return ticket

        def onJoin(self, details):
            ready.set_result(self)

        def onLeave(self, details):
            self.disconnect()

        def onDisconnect(self):
            if not gone.done():
                gone.set_result(None)

    factory = WampWebSocketClientFactory(lambda: Session(ComponentConfig("eform")), url=url,
                                         serializers=[SERIALIZERS[serializer]()])
    await loop.create_connection(factory, factory.host, factory.port)
    session = await asyncio.wait_for(ready, 10)
    session.gone = gone
    return session


async def main(url: str, callee_ticket: str, caller_ticket: str, serializer: str, caller_url: str = "") -> None:
    callee = await joined(url, callee_ticket, serializer)
    caller = await joined(caller_url or url, caller_ticket, serializer)
    heard = asyncio.get_running_loop().create_future()

    def news(*args, details=None, **kwargs):
        heard.set_result({"args": list(args), "kwargs": kwargs, "publisher_authrole": details.publisher_authrole})

    await callee.subscribe(news, "app.py.news", options=SubscribeOptions(details_arg="details"))

    def add(*numbers, details=None):
        if details.progress:
            details.progress("half", len(numbers))
        return CallResult(sum(numbers), details.caller_authrole)

    await callee.register(add, "app.py.add", options=RegisterOptions(details_arg="details"))
    await caller.publish("app.py.news", "hello", 1, n=2, options=PublishOptions(acknowledge=True))
    seen = {"event": await asyncio.wait_for(heard, 10)}
    progress = []
    result = await caller.call("app.py.add", 1, 2, 3.5,
                               options=CallOptions(on_progress=lambda *args: progress.append(list(args))))
    seen["progress"] = progress
    seen["result"] = list(result.results)
    try:
        await caller.call("app.py.nobody")
    except ApplicationError as e:
        seen["error"] = e.error
    print(json.dumps(seen), flush=True)
    for session in (caller, callee):
        session.leave()
        await asyncio.wait_for(session.gone, 10)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
