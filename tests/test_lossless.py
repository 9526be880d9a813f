"""The delivery guarantee under faults (checker/, `python -m checker`): every accepted event
reaches every subscriber once, in seq order, on every process; a resume is lossless or says
`recovered:false`, and every `recovered:false` is justified.

Two kinds of tests. The first judge a real run of the checker per mode (Redis: three gateways,
kill -9, SIGSTOP, Redis stopped, Redis slowed; SQLite: one gateway, SIGTERM and kill -9), each
run once for the module and read back from its verdict.json; a failing assertion shows the
checker's summary. The others hold the verdict itself to account on small histories written
here (no processes): a missed, duplicated, reordered, never-emitted event and an unjustified
`recovered:false` must each be counted, a justified gap must be excused.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from checker.verdict import judge, mutate, self_test

ROOT = Path(__file__).resolve().parent.parent
SEED = 20261201
DURATION = 15
MIN_ACCEPTED = 300  # events accepted in the run (about 3 x 30/s for 15 s, less what the faults stall)
MIN_DELIVERED = 200  # events each subscriber delivered


@dataclass
class Checked:
    mode: str
    code: int
    output: str
    verdict: dict | None
    history: dict | None

    @property
    def summary(self) -> str:
        return f"checker --mode {self.mode} exited {self.code}:\n{self.output[-6000:]}"


# slow (~18 s a mode, on the first test that asks for it): a 15 s checker run against real
# gateways under injected faults; every test of `checked` is marked slow through its params.
@pytest.fixture(scope="module", params=[pytest.param(mode, marks=pytest.mark.slow) for mode in ("redis", "sqlite")])
def checked(request, tmp_path_factory) -> Checked:
    mode = request.param
    out = tmp_path_factory.mktemp(f"checker-{mode}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EFORMWS_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run(
        [sys.executable, "-m", "checker", "--mode", mode, "--duration", str(DURATION), "--seed", str(SEED),
         "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    verdict_path, history_path = out / "verdict.json", out / "history.json"
    verdict = json.loads(verdict_path.read_text()) if verdict_path.exists() else None
    history = json.loads(history_path.read_text()) if history_path.exists() else None
    return Checked(mode, run.returncode, run.stdout + run.stderr, verdict, history)


def _totals(checked: Checked) -> dict:
    assert checked.verdict is not None, checked.summary
    return checked.verdict["totals"]


# -- a real run per mode -------------------------------------------------------------------


def test_the_checker_finds_the_guarantee_held(checked):
    assert checked.code == 0, checked.summary
    assert checked.verdict["ok"] is True, checked.summary


def test_no_accepted_event_is_missed(checked):
    assert _totals(checked)["missed"] == 0, checked.summary


def test_no_event_is_delivered_twice(checked):
    assert _totals(checked)["duplicated"] == 0, checked.summary


def test_events_arrive_in_seq_order(checked):
    assert _totals(checked)["out_of_order"] == 0, checked.summary


def test_every_recovered_false_is_justified(checked):
    assert _totals(checked)["unjustified_recovered_false"] == 0, checked.summary


def test_no_event_is_delivered_that_was_never_emitted(checked):
    assert _totals(checked)["never_emitted"] == 0, checked.summary


def test_every_delivery_is_the_event_the_log_holds_at_its_seq(checked):
    assert _totals(checked)["inconsistent"] == 0, checked.summary


def test_the_log_holds_every_accepted_event_once(checked):
    totals = _totals(checked)
    assert checked.verdict["log"]["available"], checked.summary
    for check in ("lost_from_log", "stored_twice", "log_unknown", "accepted_conflicts"):
        assert totals[check] == 0, (check, checked.summary)


def test_the_run_accepted_events_under_load(checked):
    events = _totals(checked) and checked.verdict["events"]
    assert events["accepted"] > MIN_ACCEPTED, checked.summary
    assert events["emit_errors"] == 0, checked.summary


def test_every_fault_of_the_schedule_was_injected(checked):
    _totals(checked)
    faults = checked.verdict["faults"]
    expected = {"redis": {"kill9", "pause", "redis-stop", "redis-delay"}, "sqlite": {"sigterm-restart", "kill9"}}
    assert {f["kind"] for f in faults} == expected[checked.mode], checked.summary
    assert all(f["injected"] for f in faults), checked.summary


def test_every_kind_of_subscriber_reconnected(checked):
    _totals(checked)
    reconnects = checked.verdict["reconnects_by_kind"]
    assert set(reconnects) == {"raw-steady", "raw-flaky", "eform"}, checked.summary
    assert all(n > 0 for n in reconnects.values()), checked.summary


def test_every_subscriber_delivered_events(checked):
    _totals(checked)
    for client in checked.verdict["clients"]:
        assert client["delivered"] > MIN_DELIVERED, (client["name"], checked.summary)


def test_every_subscriber_caught_up_after_the_faults(checked):
    _totals(checked)
    assert checked.verdict["quiescence"]["caught_up"], checked.summary


def test_the_verdict_catches_faults_planted_in_the_runs_history(checked):
    assert checked.history is not None, checked.summary
    results = self_test(checked.history)
    assert all(result["caught"] for result in results.values()), results


# -- the verdict on histories written here ---------------------------------------------------

EPOCH = "e1"


def _history(n: int = 10) -> dict:
    """n accepted events (seqs 1..n), all in the log; a steady raw client that got them on one
    connection; a flaky raw client that got 1..5, dropped and resumed (recovered) for 6..n; an
    EformClient that got them all."""
    events = [{"tag": f"t{i}", "key": f"t{i}", "attempts": [{"t": i, "outcome": 201}], "accepted": True, "error": None,
               "envelope": {"id": f"id{i}", "seq": str(i), "epoch": EPOCH}} for i in range(1, n + 1)]

    def event(i: int, c: int | None = None) -> dict:
        record = {"k": "event", "id": f"id{i}", "seq": str(i), "epoch": EPOCH, "tag": f"t{i}"}
        if c is not None:
            record["c"] = c
        return record

    steady = [{"k": "open", "c": 1, "since": None, "epoch": None}, {"k": "connection", "c": 1, "seq": "0", "epoch": EPOCH}]
    steady += [event(i, 1) for i in range(1, n + 1)]
    flaky = [{"k": "open", "c": 1, "since": None, "epoch": None}, {"k": "connection", "c": 1, "seq": "0", "epoch": EPOCH}]
    flaky += [event(i, 1) for i in range(1, 6)]
    flaky += [{"k": "close", "c": 1, "code": 1006}, {"k": "open", "c": 2, "since": "5", "epoch": EPOCH},
              {"k": "connection", "c": 2, "seq": None, "epoch": EPOCH}]
    flaky += [event(i, 2) for i in range(6, n + 1)]
    flaky += [{"k": "resumed", "c": 2, "recovered": True, "count": n - 5, "seq": str(n), "epoch": EPOCH}]
    eform = [{"k": "connect", "seq": "0", "epoch": EPOCH}] + [event(i) for i in range(1, n + 1)]
    return {
        "mode": "synthetic", "seed": 0, "duration": 0,
        "emitters": [{"name": "e1", "gateway": "g1", "events": events}],
        "clients": [{"name": "steady-1", "kind": "raw-steady", "records": steady},
                    {"name": "flaky-1", "kind": "raw-flaky", "records": flaky},
                    {"name": "eform-1", "kind": "eform", "records": eform}],
        "log": {"epoch": EPOCH, "newest": n, "low_water": 0,
                "entries": [[i, EPOCH, f"id{i}", f"t{i}"] for i in range(1, n + 1)]},
        "faults": [], "quiescence": {"caught_up": True, "waited": 0.0},
    }


def _counts(verdict: dict) -> dict:
    return {check: count for check, count in verdict["totals"].items() if count}


def test_the_verdict_holds_on_a_history_without_faults():
    verdict = judge(_history())
    assert verdict["holds"], _counts(verdict)
    assert [c["required"] for c in verdict["clients"]] == [10, 10, 10]


def test_the_verdict_counts_a_dropped_event_as_missed():
    history, check = mutate(_history(), "drop")
    verdict = judge(history)
    assert check == "missed" and _counts(verdict) == {"missed": 1}
    assert verdict["clients"][0]["examples"]["missed"][0]["seq"] == 10


def test_the_verdict_counts_an_event_delivered_again_as_duplicated():
    history, _ = mutate(_history(), "duplicate")
    assert _counts(judge(history)) == {"duplicated": 1}


def test_the_verdict_counts_two_events_swapped_as_out_of_order():
    history, _ = mutate(_history(), "swap")
    assert _counts(judge(history)) == {"out_of_order": 1}


def test_the_verdict_counts_a_recovered_false_with_everything_held_as_unjustified():
    history, _ = mutate(_history(), "unjustify")
    verdict = judge(history)
    assert _counts(verdict) == {"unjustified_recovered_false": 1}
    assert verdict["clients"][1]["resets"][0]["justified"] is False


def test_the_verdict_counts_an_event_nobody_emitted():
    history, _ = mutate(_history(), "phantom")
    assert _counts(judge(history)) == {"never_emitted": 1}


def test_the_verdict_counts_a_missed_event_of_the_python_client():
    history = _history()
    del history["clients"][2]["records"][4]  # eform-1's event 4
    verdict = judge(history)
    assert _counts(verdict) == {"missed": 1}
    assert verdict["clients"][2]["examples"]["missed"][0]["seq"] == 4


def test_the_verdict_excuses_the_gap_after_a_recovered_false_into_a_new_epoch():
    """A raw client and an EformClient resume from seq 5 of e1 into a new log e2 (what a Redis
    that lost its data gives): e1's 6..10 are excused, e2's events after the resumed seq owed."""
    history = _history()
    new = [{"tag": f"u{i}", "key": f"u{i}", "attempts": [{"t": 20 + i, "outcome": 201}], "accepted": True,
            "error": None, "envelope": {"id": f"nid{i}", "seq": str(i), "epoch": "e2"}} for i in range(1, 4)]
    history["emitters"][0]["events"] += new
    history["log"] = {"epoch": "e2", "newest": 3, "low_water": 0,
                      "entries": [[i, "e2", f"nid{i}", f"u{i}"] for i in (1, 2, 3)]}
    flaky = [r for r in history["clients"][1]["records"] if r.get("c") == 1]
    flaky += [{"k": "close", "c": 1, "code": 1006}, {"k": "open", "c": 2, "since": "5", "epoch": EPOCH},
              {"k": "connection", "c": 2, "seq": None, "epoch": "e2"},
              {"k": "event", "c": 2, "id": "nid1", "seq": "1", "epoch": "e2", "tag": "u1"},
              {"k": "resumed", "c": 2, "recovered": False, "count": 1, "seq": "1", "epoch": "e2"},
              {"k": "event", "c": 2, "id": "nid2", "seq": "2", "epoch": "e2", "tag": "u2"},
              {"k": "event", "c": 2, "id": "nid3", "seq": "3", "epoch": "e2", "tag": "u3"}]
    history["clients"][1]["records"] = flaky
    eform = history["clients"][2]["records"][:6]  # connect, events 1..5
    eform += [{"k": "disconnect", "was_connected": True, "code": 1006, "cursor": ["5", EPOCH]},
              {"k": "event", "id": "nid1", "seq": "1", "epoch": "e2", "tag": "u1"},
              {"k": "resumed", "recovered": False, "count": 1, "seq": "1", "epoch": "e2"},
              {"k": "connect", "seq": None, "epoch": "e2"},
              {"k": "event", "id": "nid2", "seq": "2", "epoch": "e2", "tag": "u2"},
              {"k": "event", "id": "nid3", "seq": "3", "epoch": "e2", "tag": "u3"}]
    history["clients"][2]["records"] = eform
    verdict = judge(history)
    for client in verdict["clients"][1:]:
        assert (client["missed"], client["unjustified_recovered_false"]) == (0, 0), client
        assert client["resets"][0]["justified"], client
        assert client["required"] == 5 + 2, client  # e1's 1..5, then e2's 2..3
    # the steady client never left e1: e1's 6..10 are owed to it, and it has them; e2's are missed
    assert verdict["clients"][0]["missed"] == 3
    # and the log lost e1's ten accepted events: that is a violation of its own
    assert verdict["totals"]["lost_from_log"] == 10


def test_the_verdict_does_not_excuse_what_an_unjustified_recovered_false_skipped():
    history = _history()
    flaky = history["clients"][1]["records"]
    flaky[:] = [r for r in flaky if not (r["k"] == "event" and r["seq"] in ("6", "7"))]
    next(r for r in flaky if r["k"] == "resumed")["recovered"] = False
    verdict = judge(history)
    assert _counts(verdict) == {"missed": 2, "unjustified_recovered_false": 1}


def test_the_self_test_catches_every_planted_fault():
    results = self_test(copy.deepcopy(_history()))
    assert all(result["caught"] for result in results.values()), results
