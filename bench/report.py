"""`python -m bench report`: the tables of docs/performance.md (between its `bench:results`
markers, and the WAMP ones between its `bench:wamp` markers) and docs/performance-fanout.png,
from the newest line of each scenario (and N) in the results file. The plot needs
matplotlib (the bench extra)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
PLOT = ROOT / "docs" / "performance-fanout.png"
START, END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"
WAMP_START, WAMP_END = "<!-- bench:wamp:start -->", "<!-- bench:wamp:end -->"
ORDER = ("eformws", "floor", "node", "peer")
LABELS = {"node": "Node ws"}  # a server's name in the tables and the plot, where not its own
WAMP_ORDER = ("eformws", "crossbar")


def display_name(name: str) -> str:
    """A server's name, or a ratio's (`eformws/node`), as the tables show it."""
    return "/".join(LABELS.get(part, part) for part in name.split("/"))


def is_wamp(line: dict) -> bool:
    return line["scenario"].startswith("wamp_")


def latest(path: Path) -> dict:
    """Newest line per (scenario, n), in file order."""
    chosen: dict = {}
    for raw in path.read_text().splitlines():
        if not raw.startswith("{"):
            continue
        line = json.loads(raw)
        key = (line["scenario"], line.get("n") or line.get("subscribers"), line.get("replay"))
        chosen[key] = line
    return chosen


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.{digits}f}"
    return str(value)


def table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(out)


def targets(lines: list[dict]) -> str:
    found = []
    for line in lines:
        label = f"{line['scenario']} N={line.get('n') or line.get('subscribers')}"
        if line.get("replay") is not None:
            label += f" replay {line['replay']}"
        for name, ok in line.get("targets", {}).items():
            missing = "n/a (no Crossbar.io in this run)" if is_wamp(line) else "n/a at this size"
            verdict = missing if ok is None else ("met" if ok else "**not met**")
            found.append(f"- {label}: {name}: {verdict}")
    return "\n".join(found) if found else "(none evaluated)"


def latency_rows(line: dict, extra=lambda s: []) -> list[list]:
    rows = []
    servers = line["servers"]
    for name in ORDER:
        s = servers.get(name)
        if s is None:
            continue
        rows.append([line.get("n"), display_name(name), s["p50_ms"], s["p95_ms"], s["p99_ms"], s["max_ms"],
                     s["server_cpu_s"],
                     f"{s['delivered']}/{s['expected']}" + (f", {s['dups']} dup" if s.get("dups") else ""), *extra(s)])
    for pair, r in line.get("ratios", {}).items():
        rows.append([line.get("n"), f"*{display_name(pair)}*", r.get("p50_ms"), r.get("p95_ms"), r.get("p99_ms"),
                     r.get("max_ms"), r.get("server_cpu_s"), "", *["" for _ in extra({})]])
    return rows


def machine_block(line: dict, node: dict | None = None) -> str:
    m = line.get("machine", {})
    v = line.get("versions", {})
    uname = " ".join(platform.uname()[:3]) if not m else f"Linux {m.get('kernel')}"
    return (f"- CPU: {m.get('cpu')} ({m.get('cores')} cores, `/proc/cpuinfo`), kernel {uname}, Python {m.get('python')}\n"
            f"- Twisted {v.get('twisted')}, Autobahn {v.get('autobahn')}, python-socketio {v.get('socketio')} "
            f"(python-engineio {v.get('engineio')}), aiohttp {v.get('aiohttp')}, uvloop {v.get('uvloop')} (load generator)\n"
            + (f"- Node ws: Node.js {node.get('node')}, ws {node.get('ws')}\n" if node else "")
            + f"- run at {line.get('at')}, load generator and servers on the same machine (loopback)")


def unavailable(lines: list[dict]) -> list[str]:
    """`<server>: not available (<why>)`, once per server that some line says was not run."""
    found = {name: reason for l in lines for name, reason in (l.get("unavailable") or {}).items()}
    return [f"{display_name(name)}: not available ({reason})" for name, reason in found.items()]


def render(chosen: dict, preliminary: bool) -> str:
    parts = []
    if preliminary:
        parts.append("> **Preliminary**: validation runs of the harness, taken while other agents' test suites "
                     "were running on the same 2-core machine. The numbers are noisy and are not the issue's "
                     "figures; a run of `python -m bench all` on a quiet machine replaces this section.")
    lines = list(chosen.values())
    if lines:
        node = next((l["node_versions"] for l in reversed(lines) if l.get("node_versions")), None)
        parts.append("Machine:\n\n" + machine_block(lines[-1], node))
        parts += unavailable(lines)
    fanout = sorted((l for l in lines if l["scenario"] == "fanout"), key=lambda l: l["n"])
    if fanout:
        rows = [r for l in fanout for r in latency_rows(l)]
        first = fanout[0]
        repeat = first.get("repeat", 1)
        per_run = next(iter(first["servers"].values()))["broadcasts"] // repeat
        runs = f", median of {repeat} runs per server (delivered: all runs)" if repeat > 1 else ""
        parts.append(f"### fanout: N clients on `/ws/lockers`, {per_run} broadcasts{runs}\n\n"
                     + table(["N", "server", "p50 ms", "p95 ms", "p99 ms", "max ms", "server CPU s", "delivered"], rows)
                     + "\n\n![fan-out latency against N](performance-fanout.png)")
    rooms = [l for l in lines if l["scenario"] == "rooms"]
    for l in rooms:
        rows = latency_rows(l, lambda s: [s.get("messages_per_s", "")] if s else [""])
        parts.append(f"### rooms: {l['n']} clients in {l['rooms']} kiosk rooms, one message per room x "
                     f"{next(iter(l['servers'].values()))['messages'] // l['rooms']}\n\n"
                     + table(["N", "server", "p50 ms", "p95 ms", "p99 ms", "max ms", "server CPU s", "delivered",
                              "messages/s sent"], rows))
    for l in sorted((l for l in lines if l["scenario"] == "connect"), key=lambda l: -(l.get("replay") or 0)):
        rows = []
        for name in ORDER:
            s = l["servers"].get(name)
            if s:
                rows.append([display_name(name), s["connected"], s["failures"], s["rate_per_s"], s["handshake_p50_ms"],
                             s["handshake_p99_ms"], s["server_cpu_ms_per_connect"]])
        for pair, r in l.get("ratios", {}).items():
            rows.append([f"*{display_name(pair)}*", "", "", r.get("rate"), "", r.get("handshake_p99_ms"), ""])
        parts.append(f"### connect: {l['n']} authenticated connects, {l['concurrency']} in flight, "
                     f"{next(iter(l['servers'].values()))['replay']} events replayed to each\n\n"
                     + table(["server", "connected", "failures", "connects/s", "ready p50 ms", "ready p99 ms",
                              "server CPU ms/connect"], rows))
    for l in (l for l in lines if l["scenario"] == "idle"):
        rows = []
        for name in ORDER:
            s = l["servers"].get(name)
            if s:
                rows.append([display_name(name), s["alive"], s["rss_before_mib"], s["rss_after_mib"],
                             s["kib_per_connection"]])
        for pair, r in l.get("ratios", {}).items():
            rows.append([f"*{display_name(pair)}*", "", "", "", r.get("kib_per_connection")])
        parts.append(f"### idle: RSS per idle authenticated connection, N = {l['n']}\n\n"
                     + table(["server", "connections", "RSS before MiB", "RSS after MiB", "KiB per connection"], rows))
    for l in (l for l in lines if l["scenario"] == "emit"):
        rows = []
        for name in ORDER:
            s = l["servers"].get(name)
            if s:
                rows.append([display_name(name), s["offered_per_s"], s["stored"], s["stored_per_s"], s["p50_ms"],
                             s["p99_ms"], s["max_ms"], s["server_cpu_s"], f"{s['delivered']}/{s['expected']}"])
        for pair, r in l.get("ratios", {}).items():
            rows.append([f"*{display_name(pair)}*", "", "", r.get("rate"), "", r.get("p99_ms"), "", "", ""])
        parts.append(f"### emit: {l['subscribers']} subscribers (one kiosk room each), SQLite store, "
                     f"{l['offered_per_s']:g} events/s offered for {l['seconds']:g} s, {l['via']}\n\n"
                     + table(["server", "offered/s", "stored", "stored/s", "p50 ms", "p99 ms", "max ms",
                              "server CPU s", "delivered"], rows))
    for l in (l for l in lines if l["scenario"] == "emit-http"):
        rows = []
        for name, s in l["servers"]["eformws"].items():
            rows.append([s["batch"], s["connections"], s["events"], s["stored"], s["stored_per_s"],
                         s["request_p50_ms"], s["request_p99_ms"], s["p50_ms"], s["p99_ms"],
                         s["server_cpu_us_per_event"], f"{s['delivered']}/{s['expected']}"])
        parts.append(f"### emit-http: `POST /api/websocket/events`, {l['subscribers']} subscribers (one kiosk room "
                     f"each), SQLite store, eformws\n\n"
                     + table(["events a request", "connections", "events", "stored", "stored/s", "request p50 ms",
                              "request p99 ms", "delivery p50 ms", "delivery p99 ms", "server CPU us/event",
                              "delivered"], rows))
    for l in (l for l in lines if l["scenario"] == "compression"):
        rows = []
        for mode, s in l["servers"]["eformws"].items():
            rows.append([mode, s["p50_ms"], s["p99_ms"], s["server_cpu_s"], s["generators_cpu_s"],
                         s["wire_bytes_per_message"], f"{s['delivered']}/{s['expected']}"])
        r = l.get("deflate/plain", {})
        rows.append(["*deflate/plain*", r.get("p50_ms"), r.get("p99_ms"), r.get("server_cpu_s"), "",
                     r.get("wire_bytes_per_message"), ""])
        parts.append(f"### compression: eformws fan-out to {l['n']} clients, a kiosk's 24 lockers a broadcast, "
                     f"without and with permessage-deflate (median of {l.get('repeat', 1)} runs)\n\n"
                     + table(["", "p50 ms", "p99 ms", "server CPU s", "clients' CPU s", "bytes read a message",
                              "delivered"], rows))
    for l in (l for l in lines if l["scenario"] == "workers"):
        parts.append(f"### workers: {l['n']} clients, {l['workers']} worker processes + Redis\n\n"
                     + table(["N", "server", "p50 ms", "p95 ms", "p99 ms", "max ms", "server CPU s", "delivered"],
                             latency_rows(l)))
    parts.append("Targets (as the JSON lines evaluate them):\n\n" + targets(lines))
    return "\n\n".join(parts)


def render_wamp(lines: list[dict]) -> str:
    """The WAMP tables: one row per router with each scenario's rate and router CPU per
    round trip or delivered event, the ratios eformws/crossbar, then the details."""
    lines = sorted(lines, key=lambda l: (l["scenario"] != "wamp_rpc", l["n"]))
    if not lines:
        return "(no WAMP results)"

    def label(l):
        return f"rpc, {l['n']} caller{'s' if l['n'] != 1 else ''}" if l["scenario"] == "wamp_rpc" \
            else f"pub/sub, {l['n']} subscribers"

    def figures(l):
        return ("calls_per_s", "cpu_us_per_call", "calls/s", "µs CPU/call") if l["scenario"] == "wamp_rpc" \
            else ("events_per_s", "cpu_us_per_event", "events/s", "µs CPU/event")

    headers = ["router"]
    for l in lines:
        _, _, rate_name, cpu_name = figures(l)
        headers += [f"{label(l)}: {rate_name}", cpu_name]
    rows = []
    for name in WAMP_ORDER:
        if not any(name in l["servers"] for l in lines):
            continue
        row = [name]
        for l in lines:
            rate, cpu, _, _ = figures(l)
            s = l["servers"].get(name)
            row += [s[rate], s[cpu]] if s else ["", ""]
        rows.append(row)
    if any("eformws/crossbar" in l.get("ratios", {}) for l in lines):
        row = ["*eformws/crossbar*"]
        for l in lines:
            rate, cpu, _, _ = figures(l)
            r = l.get("ratios", {}).get("eformws/crossbar", {})
            row += [r.get(rate), r.get(cpu)]
        rows.append(row)
    parts = [table(headers, rows)]
    parts += unavailable(lines)
    detail = []
    for l in lines:
        rate, cpu, rate_name, _ = figures(l)
        for name in WAMP_ORDER:
            s = l["servers"].get(name)
            if not s:
                continue
            if l["scenario"] == "wamp_rpc":
                done = f"{s['calls']} answered" + (f", {s['errors']} errors" if s["errors"] else "") \
                    + (f", {s['unanswered']} unanswered" if s["unanswered"] else "")
                clients = f"{s['callers_cpu_s']} + {s['callee_cpu_s']}"
            else:
                done = f"{s['delivered']}/{s['expected']}" + (f", {s['dups']} dup" if s["dups"] else "") \
                    + (f", {s['errors']} errors" if s["errors"] else "")
                clients = f"{s['client_cpu_s']}"
            detail.append([label(l), name, s[rate], s["p50_ms"], s["p99_ms"], s["max_ms"], s["server_cpu_s"],
                           s["elapsed_s"], clients, done])
    parts.append(table(["scenario", "router", "rate /s", "p50 ms", "p99 ms", "max ms", "router CPU s", "measured s",
                        "clients CPU s", "answered / delivered"], detail))
    first = lines[0]
    repeat, seconds = first.get("repeat", 1), first.get("seconds")
    v, cb = first.get("versions", {}), first.get("crossbar_versions") or {}
    m = first.get("machine", {})
    parts.append(f"Median of {repeat} run{'s' if repeat != 1 else ''} of {seconds:g} s each per router "
                 f"(routers taking turns; answered and delivered: all runs)"
                 + "".join(f"; pub/sub: {l['window']} publications in flight" for l in lines if l.get("window"))
                 + f"; clients CPU s: callers + callee, or the one pub/sub process. eformws on Twisted {v.get('twisted')}, Autobahn {v.get('autobahn')}"
                 + (f"; Crossbar.io {cb.get('crossbar')} on Twisted {cb.get('twisted')}, Autobahn {cb.get('autobahn')}"
                    if cb else "")
                 + f"; {m.get('cpu')}, {m.get('cores')} cores, Python {m.get('python')}; run at {first.get('at')}"
                 + (" (--quick)" if first.get("quick") else "") + ".")
    parts.append("Targets (as the JSON lines evaluate them):\n\n" + targets(lines))
    return "\n\n".join(parts)


def _replace(text: str, start: str, end: str, body: str) -> str:
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    return f"{head}{start}\n{body}\n{end}{tail}"


def plot(chosen: dict, path: Path = PLOT, preliminary: bool = False) -> bool:
    fanout = sorted((l for l in chosen.values() if l["scenario"] == "fanout"), key=lambda l: l["n"])
    if not fanout:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for name, style in zip(ORDER, ("o-", "s--", "d-.", "^:")):
        points = [(l["n"], l["servers"][name]) for l in fanout if name in l["servers"]]
        if not points:
            continue
        for ax, key in zip(axes, ("p50_ms", "p99_ms")):
            ax.plot([n for n, _ in points], [s[key] for _, s in points], style, label=display_name(name))
    for ax, title in zip(axes, ("p50", "p99")):
        ax.set_title(f"fan-out delivery latency, {title}")
        ax.set_xlabel("clients on one namespace (N)")
        ax.set_ylabel("ms (broadcast trigger to client receipt)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    quick = preliminary or any(l.get("quick") for l in fanout)
    shown = [name for name in ORDER if any(name in l["servers"] for l in fanout)]
    titles = {"eformws": "eformws", "floor": "bare Autobahn (floor)", "node": "Node.js + ws (Node ws)",
              "peer": "python-socketio (peer)"}
    fig.suptitle(" vs ".join(titles[name] for name in shown) + (" — preliminary" if quick else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(results: Path, quick: bool = False, doc: Path = DOC) -> None:
    """Rewrite `doc` between the markers (a new page when it has none) and the plot beside
    it (`performance-fanout.png` in the same folder)."""
    everything = latest(results)
    chosen = {k: l for k, l in everything.items() if not is_wamp(l)}
    wamp = [l for l in everything.values() if is_wamp(l)]
    text = doc.read_text() if doc.exists() else ""
    preliminary = quick or any(l.get("quick") for l in chosen.values())
    if chosen or not wamp:
        if START not in text:
            text = f"{text or '# Performance'}\n\n{START}\n{END}\n"
        text = _replace(text, START, END, render(chosen, preliminary))
    if wamp:
        if WAMP_START not in text:
            text = f"{text or '# Performance'}\n\n{WAMP_START}\n{WAMP_END}\n"
        text = _replace(text, WAMP_START, WAMP_END, render_wamp(wamp))
    doc.write_text(text)
    image = doc.parent / PLOT.name
    plotted = plot(chosen, image, preliminary) if chosen else False
    print(f"wrote {doc}" + (f" and {image}" if plotted else " (no plot: matplotlib missing or no fanout)"))


if __name__ == "__main__":
    import sys

    write_report(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "results.jsonl")
