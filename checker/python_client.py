"""One `eformws.client.EformClient` on `/ws/events` as a program of its own (Twisted), writing
one JSON line per callback (event, resumed, connect, disconnect) to `--out`, until SIGTERM.

    python -m checker.python_client --url ws://127.0.0.1:PORT --session SID --out FILE
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m checker.python_client")
    parser.add_argument("--url", required=True, help="the gateway (or the proxy in front of it)")
    parser.add_argument("--session", required=True)
    parser.add_argument("--out", required=True, help="one JSON line per callback is appended here")
    parser.add_argument("--initial-delay", type=float, default=0.05)
    parser.add_argument("--max-delay", type=float, default=1.0)
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    from checker.clients import event_record
    from eformws.client import EformClient

    out = open(args.out, "a", buffering=1)
    start = time.monotonic()

    def write(kind: str, **fields) -> None:
        fields["k"] = kind
        fields["t"] = round(time.monotonic() - start, 4)
        out.write(json.dumps(fields, separators=(",", ":")) + "\n")

    client = EformClient(args.url, "/ws/events", args.session, initial_delay=args.initial_delay,
                         max_delay=args.max_delay, connect_timeout=5.0)

    client.on("*", lambda envelope: write("event", **event_record(envelope)))
    client.on_resumed(lambda r: write("resumed", recovered=r.recovered, count=r.count, seq=r.seq, epoch=r.epoch))
    client.on_connect(lambda c: write("connect", seq=c.get("seq"), epoch=c.get("epoch"),
                                      connection=c.get("connectionId"), cursor=[client.last_seq, client.last_epoch]))
    client.on_disconnect(lambda d: write("disconnect", was_connected=d.was_connected, code=d.code,
                                         reason=d.reason, cursor=[client.last_seq, client.last_epoch]))

    def closed(result):
        write("closed", outcome=None if result is None else repr(result))
        if reactor.running:
            try:
                reactor.stop()
            except Exception:  # already stopping (SIGTERM): nothing to do
                pass

    client.when_closed().addBoth(closed)
    reactor.addSystemEventTrigger("before", "shutdown", client.close)
    reactor.callWhenRunning(client.connect)
    write("start", url=args.url)
    reactor.run()
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
