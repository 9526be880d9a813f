"""The analysis: from a run's history (what was accepted, what each client received, the log
at the end) the verdict on the delivery guarantee, with counts and examples per client.

    python -m checker.verdict HISTORY.json [--mutate drop|duplicate|swap|unjustify|phantom]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass, field

EXAMPLES = 5  # offending examples kept per check and client
CHECKS = ("missed", "duplicated", "out_of_order", "unjustified_recovered_false", "never_emitted", "inconsistent")
LOG_CHECKS = ("lost_from_log", "stored_twice", "log_unknown", "accepted_conflicts")
RAW_KINDS = ("raw-steady", "raw-flaky")


def _seq(value) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


@dataclass
class Reset:
    """A `recovered: false`: from `cursor` (what the client resumed from) to `resumed` (the
    server's position after it); deliveries from `index` on are judged afresh."""

    index: int
    cursor: tuple[int | None, str | None]
    resumed: tuple[int | None, str | None]
    count: int | None
    justified: bool = False
    why: str = ""


@dataclass
class Stream:
    """One client's history as the verdict reads it."""

    name: str
    kind: str
    start: tuple[int, str] | None = None  # (seq, epoch) where its first connection began
    deliveries: list[dict] = field(default_factory=list)  # events, in the order delivered
    resets: list[Reset] = field(default_factory=list)
    reconnects: int = 0
    resumes: int = 0  # recovered: true answers
    closes: dict = field(default_factory=dict)  # close code -> count (raw) / disconnect code (eform)


def _raw_stream(client: dict) -> Stream:
    """Raw clients: each connection's records; a connection answered `recovered: false`
    restarts the judging at its first event (what it got before `resumed` is the replay)."""
    stream = Stream(client["name"], client["kind"])
    opens: dict[int, dict] = {}
    resumed: dict[int, dict] = {}
    for record in client["records"]:
        if record["k"] == "open":
            opens[record["c"]] = record
        elif record["k"] == "resumed":
            resumed.setdefault(record["c"], record)
    reset_at: set[int] = set()
    connections = 0
    for record in client["records"]:
        kind = record["k"]
        if kind == "open":
            connections += 1
        elif kind == "connection" and stream.start is None and record.get("seq") is not None:
            stream.start = (_seq(record["seq"]), record.get("epoch"))
        elif kind == "close":
            code = str(record.get("code"))
            stream.closes[code] = stream.closes.get(code, 0) + 1
        elif kind == "resumed" and record.get("recovered") is True:
            stream.resumes += 1
        elif kind == "event":
            conn = record.get("c")
            answer = resumed.get(conn)
            if answer is not None and answer.get("recovered") is False and conn not in reset_at:
                reset_at.add(conn)
                opened = opens.get(conn, {})
                stream.resets.append(Reset(len(stream.deliveries), (_seq(opened.get("since")), opened.get("epoch")),
                                           (_seq(answer.get("seq")), answer.get("epoch")), answer.get("count")))
            stream.deliveries.append(record)
    # A recovered: false that brought no event at all still moves the obligations.
    for conn, answer in resumed.items():
        if answer.get("recovered") is False and conn not in reset_at:
            opened = opens.get(conn, {})
            index = len(stream.deliveries)
            for i, record in enumerate(stream.deliveries):
                if record.get("c", 0) > conn:
                    index = i
                    break
            stream.resets.append(Reset(index, (_seq(opened.get("since")), opened.get("epoch")),
                                       (_seq(answer.get("seq")), answer.get("epoch")), answer.get("count")))
    stream.resets.sort(key=lambda r: r.index)
    stream.reconnects = max(0, connections - 1)
    return stream


def _eform_stream(client: dict) -> Stream:
    """EformClient: callbacks in order; a `Resumed(recovered=False)` restarts the judging
    just after the disconnect before it (the catching up it reports comes after that)."""
    stream = Stream(client["name"], client["kind"])
    connects = 0
    last_disconnect: tuple[int, dict] | None = None  # (index in deliveries, record)
    for record in client["records"]:
        kind = record["k"]
        if kind == "event":
            stream.deliveries.append(record)
        elif kind == "disconnect":
            last_disconnect = (len(stream.deliveries), record)
            if record.get("was_connected"):
                code = str(record.get("code"))
                stream.closes[code] = stream.closes.get(code, 0) + 1
        elif kind == "connect":
            connects += 1
            if stream.start is None and record.get("seq") is not None:
                stream.start = (_seq(record["seq"]), record.get("epoch"))
        elif kind == "resumed":
            if record.get("recovered") is True:
                stream.resumes += 1
            else:
                index, before = last_disconnect if last_disconnect is not None else (0, {"cursor": [None, None]})
                cursor = before.get("cursor") or [None, None]
                stream.resets.append(Reset(index, (_seq(cursor[0]), cursor[1]),
                                           (_seq(record.get("seq")), record.get("epoch")), record.get("count")))
    stream.reconnects = max(0, connects - 1)
    return stream


def streams_of(history: dict) -> list[Stream]:
    return [(_raw_stream if c["kind"] in RAW_KINDS else _eform_stream)(c) for c in history["clients"]]


class Log:
    """The event log as read at the end of the run."""

    def __init__(self, log: dict | None):
        self.available = log is not None
        log = log or {}
        self.epoch = log.get("epoch")
        self.newest = log.get("newest")
        self.low_water = log.get("low_water", 0)
        self.by_position: dict[tuple[str, int], tuple[str, str | None]] = {}
        self.by_id: dict[str, tuple[str, int]] = {}
        self.by_tag: dict[str, list[int]] = {}
        for seq, epoch, event_id, tag in log.get("entries", ()):
            self.by_position[(epoch, seq)] = (event_id, tag)
            self.by_id[event_id] = (epoch, seq)
            if tag is not None:
                self.by_tag.setdefault(tag, []).append(seq)


def _justify(reset: Reset, log: Log) -> None:
    cursor_seq, cursor_epoch = reset.cursor
    resumed_seq, resumed_epoch = reset.resumed
    if cursor_seq is None:
        reset.justified, reset.why = True, "the cursor is not a seq of the log"
    elif cursor_epoch != resumed_epoch:
        reset.justified, reset.why = True, f"another epoch ({cursor_epoch} -> {resumed_epoch})"
    elif log.available and cursor_epoch == log.epoch and cursor_seq < log.low_water:
        reset.justified = True
        reset.why = f"the cursor {cursor_seq} is older than the oldest event held ({log.low_water + 1})"
    else:
        reset.why = (f"cursor {cursor_seq} of epoch {cursor_epoch}, resumed at {resumed_seq}, the log holds every "
                     f"event after {log.low_water}")


def _brief(record: dict) -> dict:
    return {k: record.get(k) for k in ("id", "seq", "epoch", "tag", "c", "t") if k in record}


def judge_client(stream: Stream, accepted: list[dict], accepted_by_id: dict, log: Log, posted: set,
                 final_epoch: str | None) -> dict:
    """What one client was owed and what it got. Owed: every accepted event after its start
    position (same epoch), and of every epoch it entered by a justified `recovered:false`
    after the position it entered at; of the log's final epoch, if it never entered it, all
    (it was stuck in an old log). Excused: what a justified `recovered:false` skipped."""
    counts = dict.fromkeys(CHECKS, 0)
    examples: dict[str, list] = {check: [] for check in CHECKS}

    def offend(check: str, example) -> None:
        counts[check] += 1
        if len(examples[check]) < EXAMPLES:
            examples[check].append(example)

    # Duplicates and order, judged afresh after each reset.
    boundaries = [r.index for r in stream.resets]
    seen: set = set()
    last: dict = {}
    delivered_ids: set = set()
    for i, record in enumerate(stream.deliveries):
        if i in boundaries:
            seen, last = set(), {}
        event_id, seq, epoch = record.get("id"), _seq(record.get("seq")), record.get("epoch")
        delivered_ids.add(event_id)
        if event_id in seen:
            offend("duplicated", _brief(record))
        else:
            seen.add(event_id)
            if seq is not None and epoch in last and seq <= last[epoch]["seq"]:
                offend("out_of_order", {"after": _brief(last[epoch]["record"]), "came": _brief(record)})
        if seq is not None and (epoch not in last or seq > last[epoch]["seq"]):
            last[epoch] = {"seq": seq, "record": record}
        # Never emitted, and consistency with what was accepted and what the log holds.
        known = accepted_by_id.get(event_id)
        in_log = log.by_id.get(event_id)
        if known is None and in_log is None and record.get("tag") not in posted:
            offend("never_emitted", _brief(record))
        elif known is not None and (known["seq"] != seq or known["epoch"] != epoch):
            offend("inconsistent", {"delivered": _brief(record), "accepted": known})
        elif in_log is not None and in_log != (epoch, seq):
            offend("inconsistent", {"delivered": _brief(record), "log": list(in_log)})
        elif log.available and (epoch, seq) in log.by_position and log.by_position[(epoch, seq)][0] != event_id:
            offend("inconsistent", {"delivered": _brief(record), "log_id": log.by_position[(epoch, seq)][0]})
        elif log.available and in_log is None and epoch == log.epoch:
            # nothing expires or is trimmed in a run: what was delivered must still be there
            offend("inconsistent", {"delivered": _brief(record), "log": "not held"})

    # Resets: justified or not; what a justified one excuses; where obligations begin.
    obligations: dict[str, int] = {}  # epoch -> seqs after this are owed
    excused: list[tuple[str, int, int | None]] = []  # (epoch, after, up to (None: all))
    if stream.start is not None and stream.start[0] is not None:
        obligations[stream.start[1]] = stream.start[0]
    resets = []
    for reset in stream.resets:
        _justify(reset, log)
        resets.append({"cursor": list(reset.cursor), "resumed": list(reset.resumed), "count": reset.count,
                       "justified": reset.justified, "why": reset.why, "at_delivery": reset.index})
        if not reset.justified:
            offend("unjustified_recovered_false", resets[-1])
            continue
        (cursor_seq, cursor_epoch), (resumed_seq, resumed_epoch) = reset.cursor, reset.resumed
        if cursor_seq is not None and cursor_epoch == resumed_epoch:
            excused.append((cursor_epoch, cursor_seq, resumed_seq))
        else:
            if cursor_epoch is not None:
                excused.append((cursor_epoch, cursor_seq if cursor_seq is not None else -1, None))
            if resumed_epoch is not None and resumed_seq is not None and resumed_epoch not in obligations:
                obligations[resumed_epoch] = resumed_seq

    if final_epoch is not None and final_epoch not in obligations:
        obligations[final_epoch] = 0

    def owed(event: dict) -> bool:
        after = obligations.get(event["epoch"])
        if after is None or event["seq"] <= after:
            return False
        for epoch, low, high in excused:
            if event["epoch"] == epoch and event["seq"] > low and (high is None or event["seq"] <= high):
                return False
        return True

    required = [event for event in accepted if owed(event)]
    for event in required:
        if event["id"] not in delivered_ids:
            offend("missed", event)
    return {
        "name": stream.name,
        "kind": stream.kind,
        "start": list(stream.start) if stream.start else None,
        "delivered": len(stream.deliveries),
        "required": len(required),
        "reconnects": stream.reconnects,
        "resumed_recovered": stream.resumes,
        "resets": resets,
        "closes": stream.closes,
        **counts,
        "examples": {check: found for check, found in examples.items() if found},
    }


def judge(history: dict) -> dict:
    """The verdict of one history (see checker/run.py for its shape)."""
    log = Log(history.get("log"))
    accepted: list[dict] = []
    posted: set = set()
    emit_errors: list = []
    unconfirmed = 0
    attempts = retried = 0
    for emitter in history["emitters"]:
        for event in emitter["events"]:
            posted.add(event["tag"])
            attempts += len(event["attempts"])
            retried += len(event["attempts"]) > 1
            if event.get("error"):
                emit_errors.append({"tag": event["tag"], "error": event["error"]})
            if event["accepted"]:
                envelope = event["envelope"]
                accepted.append({"id": envelope["id"], "seq": _seq(envelope["seq"]), "epoch": envelope["epoch"],
                                 "tag": event["tag"]})
            elif not event.get("error"):
                unconfirmed += 1
    accepted.sort(key=lambda e: (e["epoch"], e["seq"]))
    accepted_by_id = {event["id"]: event for event in accepted}

    # The log against what was accepted.
    log_counts = dict.fromkeys(LOG_CHECKS, 0)
    log_examples: dict[str, list] = {check: [] for check in LOG_CHECKS}

    def log_offend(check: str, example) -> None:
        log_counts[check] += 1
        if len(log_examples[check]) < EXAMPLES:
            log_examples[check].append(example)

    positions: dict = {}
    for event in accepted:
        other = positions.setdefault((event["epoch"], event["seq"]), event)
        if other is not event:
            log_offend("accepted_conflicts", {"first": other, "second": event})
    if log.available:
        for event in accepted:
            if log.by_position.get((event["epoch"], event["seq"]), (None,))[0] != event["id"]:
                log_offend("lost_from_log", event)
        for tag, seqs in log.by_tag.items():
            if len(seqs) > 1:
                log_offend("stored_twice", {"tag": tag, "seqs": seqs})
        for (epoch, seq), (event_id, tag) in log.by_position.items():
            if tag not in posted:
                log_offend("log_unknown", {"seq": seq, "epoch": epoch, "id": event_id, "tag": tag})

    final_epoch = log.epoch if log.available else (accepted[-1]["epoch"] if accepted else None)
    if accepted and final_epoch not in {e["epoch"] for e in accepted}:
        final_epoch = None  # nothing accepted in the log's epoch: nothing of it is owed
    clients = [judge_client(s, accepted, accepted_by_id, log, posted, final_epoch)
               for s in streams_of(history)]
    totals = {check: sum(c[check] for c in clients) for check in CHECKS}
    totals.update(log_counts)
    holds = all(value == 0 for value in totals.values())

    # Whether the run exercised what it claims to.
    faults = history.get("faults", [])
    reconnects_by_kind: dict[str, int] = {}
    for client in clients:
        reconnects_by_kind[client["kind"]] = reconnects_by_kind.get(client["kind"], 0) + client["reconnects"]
    quiescence = history.get("quiescence", {})
    exercised = {
        "every_fault_injected": bool(faults) and all(f.get("injected") for f in faults),
        "every_client_delivered": bool(clients) and all(c["delivered"] > 0 for c in clients),
        "every_client_kind_reconnected": bool(reconnects_by_kind) and all(v > 0 for v in reconnects_by_kind.values()),
        "caught_up": bool(quiescence.get("caught_up")),
        "no_emit_errors": not emit_errors,
    }
    return {
        "holds": holds,
        "exercised": all(exercised.values()),
        "ok": holds and all(exercised.values()),
        "mode": history.get("mode"),
        "seed": history.get("seed"),
        "duration": history.get("duration"),
        "totals": totals,
        "checks": exercised,
        "events": {
            "posted": len(posted),
            "accepted": len(accepted),
            "unconfirmed": unconfirmed,
            "emit_errors": len(emit_errors),
            "attempts": attempts,
            "retried": retried,
            "in_log": len(log.by_position) if log.available else None,
            "epochs": sorted({e["epoch"] for e in accepted}),
            "newest_accepted": [accepted[-1]["seq"], accepted[-1]["epoch"]] if accepted else None,
        },
        "emit_error_examples": emit_errors[:EXAMPLES],
        "log": {"available": log.available, "epoch": log.epoch, "newest": log.newest, "low_water": log.low_water,
                "examples": {check: found for check, found in log_examples.items() if found}},
        "reconnects_by_kind": reconnects_by_kind,
        "faults": faults,
        "quiescence": quiescence,
        "clients": clients,
    }


def summary(verdict: dict) -> str:
    """One paragraph for a person."""
    events, totals = verdict["events"], verdict["totals"]
    clients = verdict["clients"]
    delivered = sum(c["delivered"] for c in clients)
    reconnects = ", ".join(f"{kind} {n}" for kind, n in sorted(verdict["reconnects_by_kind"].items()))
    faults = "; ".join(
        f"{f['kind']} {f['target']} at {f['started']:.1f}s"
        + ("" if f.get("injected") else f" (NOT INJECTED: {f.get('error')})")
        if f.get("started") is not None else f"{f['kind']} {f['target']} NOT INJECTED ({f.get('error')})"
        for f in verdict["faults"]
    )
    violations = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in totals.items() if v) or "none"
    missing = [k.replace("_", " ") for k, v in verdict["checks"].items() if not v]
    head = "HOLDS" if verdict["holds"] else "VIOLATED"
    text = (
        f"checker {verdict['mode']} seed {verdict['seed']} duration {verdict['duration']}s: the delivery guarantee "
        f"{head}. {events['accepted']} of {events['posted']} events accepted ({events['unconfirmed']} unconfirmed, "
        f"{events['retried']} needed retries, {events['emit_errors']} refused), {events['in_log']} in the log, "
        f"epochs {events['epochs']}; {len(clients)} clients delivered {delivered} events "
        f"(min {min((c['delivered'] for c in clients), default=0)} per client); reconnects: {reconnects}; "
        f"resets (recovered:false): {sum(len(c['resets']) for c in clients)}; faults: {faults or 'none'}; "
        f"quiescence: {'caught up' if verdict['quiescence'].get('caught_up') else 'NOT caught up'} after "
        f"{verdict['quiescence'].get('waited', 0):.1f}s. Violations: {violations}."
    )
    if missing:
        text += f" The run did not exercise everything: {', '.join(missing)}."
    for client in clients:
        bad = {k: client[k] for k in CHECKS if client[k]}
        if bad:
            text += f" {client['name']} ({client['kind']}): {bad}, first examples {json.dumps(client['examples'])[:600]}."
    if verdict["log"]["examples"]:
        text += f" Log: {json.dumps(verdict['log']['examples'])[:600]}."
    return text


# -- self-test: a history made worse must be judged worse -----------------------------------


def _event_positions(client: dict) -> list[int]:
    return [i for i, r in enumerate(client["records"]) if r["k"] == "event"]


def mutate(history: dict, how: str) -> tuple[dict, str]:
    """A copy of `history` with one fault planted in one client's record: `drop` (an event
    it delivered, after its start), `duplicate` (an event delivered again, later),
    `swap` (two events in the wrong order), `unjustify` (a recovered resume turned into
    recovered: false), `phantom` (an event never emitted). Returns it and the check that must
    catch it."""
    history = copy.deepcopy(history)
    candidates = [c for c in history["clients"] if len(_event_positions(c)) >= 4]
    if how == "unjustify":
        candidates = [c for c in history["clients"] if c["kind"] in RAW_KINDS and
                      any(r["k"] == "resumed" and r.get("recovered") is True for r in c["records"])]
    if not candidates:
        raise ValueError(f"no client's record can be mutated by {how!r}")
    client = candidates[0]
    records = client["records"]
    events = _event_positions(client)
    middle = events[len(events) // 2]
    if how == "drop":
        # the newest accepted event it delivered, which it owes (its seq is after any start)
        accepted = {e["envelope"]["id"] for em in history["emitters"] for e in em["events"] if e["accepted"]}
        del records[next(i for i in reversed(events) if records[i].get("id") in accepted)]
        return history, "missed"
    if how == "duplicate":
        records.insert(events[-1] + 1, dict(records[middle]))
        return history, "duplicated"
    if how == "swap":
        a, b = events[len(events) // 2], events[len(events) // 2 + 1]
        records[a], records[b] = records[b], records[a]
        return history, "out_of_order"
    if how == "unjustify":
        for record in records:
            if record["k"] == "resumed" and record.get("recovered") is True:
                record["recovered"] = False
                break
        return history, "unjustified_recovered_false"
    if how == "phantom":
        record = dict(records[middle])
        newest = max(int(records[i]["seq"]) for i in events)
        record.update(id="00000000-0000-4000-8000-000000000000", tag="never-posted", seq=str(newest + 1000))
        records.insert(events[-1] + 1, record)
        return history, "never_emitted"
    raise ValueError(f"unknown mutation {how!r}")


MUTATIONS = ("drop", "duplicate", "swap", "unjustify", "phantom")


def self_test(history: dict) -> dict:
    """Judge each mutation of `history`: the check it plants must count more than it does on
    the history as it is."""
    base = judge(history)["totals"]
    results = {}
    for how in MUTATIONS:
        try:
            mutated, check = mutate(history, how)
        except ValueError as e:
            results[how] = {"caught": None, "why": str(e)}
            continue
        verdict = judge(mutated)
        count = verdict["totals"][check]
        results[how] = {"check": check, "before": base[check], "count": count,
                        "caught": count > base[check] and not verdict["holds"]}
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m checker.verdict", description="Judge a recorded history.")
    parser.add_argument("history")
    parser.add_argument("--mutate", choices=MUTATIONS, help="plant one fault in the history first")
    args = parser.parse_args(argv)
    with open(args.history) as f:
        history = json.load(f)
    if args.mutate:
        history, _ = mutate(history, args.mutate)
    verdict = judge(history)
    print(summary(verdict))
    return 0 if verdict["holds"] else 1


if __name__ == "__main__":
    sys.exit(main())
