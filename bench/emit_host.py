"""eformws in a helper process of the harness, for the `emit` scenario's Python-API path:
the same `EformService` that `twistd -n eformws --config FILE` builds (same default
reactor, same configuration file), plus a control line on standard input,
`emit RATE SECONDS ROOMS`, that calls the public Python API
(`service.events.emit_locker_state_changed`, i.e. validate -> append to SQLite -> delivered
from the log) RATE times a second for SECONDS, each event for kiosk `kiosk-(k % ROOMS)` with
`metadata = {"t": <time.time() at the call>, "i": k}`, and answers one JSON line once every
emit's Deferred has fired: sent, stored, failed, and when the last one was stored.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from twisted.internet import reactor, stdio
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.protocols.basic import LineReceiver

from bench.floor import emit_loop
from eformws.runtime.config import load_config
from eformws.runtime.service import EformService


class Control(LineReceiver):
    delimiter = b"\n"

    def __init__(self, service: EformService):
        self.service = service

    def lineReceived(self, line):
        parts = line.decode().split()
        if not parts or parts[0] != "emit":
            return
        rate, seconds, rooms = float(parts[1]), float(parts[2]), int(parts[3])
        events = self.service.events
        state = {"stored": 0, "failed": 0, "pending": 0, "last": None, "loop_done": None, "error": None}
        start = time.time()

        def stored(_):
            state["stored"] += 1
            state["last"] = time.time()

        def failed(failure):
            state["failed"] += 1
            state["error"] = failure.getErrorMessage()

        def finished(_=None):
            state["pending"] -= 1
            maybe_answer()

        def send(envelope, room):
            data = envelope["data"]
            state["pending"] += 1
            d = events.emit_locker_state_changed(data["lockerId"], "closed", "open", data["kioskId"],
                                                 metadata=data["metadata"])
            d.addCallbacks(stored, failed)
            d.addBoth(finished)

        def maybe_answer():
            if state["loop_done"] is not None and state["pending"] == 0:
                result = {"sent": state["loop_done"]["sent"], "loop_elapsed": state["loop_done"]["elapsed"],
                          "stored": state["stored"], "failed": state["failed"], "error": state["error"],
                          "elapsed": (state["last"] or time.time()) - start}
                state["loop_done"] = None
                self.sendLine(json.dumps(result).encode())

        def loop_done(result):
            state["loop_done"] = result
            maybe_answer()

        emit_loop(send, rate, seconds, rooms).addCallback(loop_done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    config = load_config(args.config)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr),
                              [LogLevelFilterPredicate(LogLevel.levelWithName(config.get("log", "level")))])],
        redirectStandardIO=False,
    )
    service = EformService(config)
    service.startService()
    stdio.StandardIO(Control(service))
    service.ready.addCallback(
        lambda _: print(f"eformws (emit host) listening on 127.0.0.1:{service.port}", flush=True)
    )
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
