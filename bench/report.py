"""`python -m bench report`: the tables of docs/performance.md (between its `bench:results`
markers) and docs/performance-fanout.png, from the newest line of each scenario (and N)
in the results file. The plot needs matplotlib (the bench extra)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
PLOT = ROOT / "docs" / "performance-fanout.png"
START, END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"
ORDER = ("eformws", "floor", "peer")


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
            verdict = "n/a at this size" if ok is None else ("met" if ok else "**not met**")
            found.append(f"- {label}: {name}: {verdict}")
    return "\n".join(found) if found else "(none evaluated)"


def latency_rows(line: dict, extra=lambda s: []) -> list[list]:
    rows = []
    servers = line["servers"]
    for name in ORDER:
        s = servers.get(name)
        if s is None:
            continue
        rows.append([line.get("n"), name, s["p50_ms"], s["p95_ms"], s["p99_ms"], s["max_ms"], s["server_cpu_s"],
                     f"{s['delivered']}/{s['expected']}" + (f", {s['dups']} dup" if s.get("dups") else ""), *extra(s)])
    for pair, r in line.get("ratios", {}).items():
        rows.append([line.get("n"), f"*{pair}*", r.get("p50_ms"), r.get("p95_ms"), r.get("p99_ms"), r.get("max_ms"),
                     r.get("server_cpu_s"), "", *["" for _ in extra({})]])
    return rows


def machine_block(line: dict) -> str:
    m = line.get("machine", {})
    v = line.get("versions", {})
    uname = " ".join(platform.uname()[:3]) if not m else f"Linux {m.get('kernel')}"
    return (f"- CPU: {m.get('cpu')} ({m.get('cores')} cores, `/proc/cpuinfo`), kernel {uname}, Python {m.get('python')}\n"
            f"- Twisted {v.get('twisted')}, Autobahn {v.get('autobahn')}, python-socketio {v.get('socketio')} "
            f"(python-engineio {v.get('engineio')}), aiohttp {v.get('aiohttp')}, uvloop {v.get('uvloop')} (load generator)\n"
            f"- run at {line.get('at')}, load generator and servers on the same machine (loopback)")


def render(chosen: dict, preliminary: bool) -> str:
    parts = []
    if preliminary:
        parts.append("> **Preliminary**: validation runs of the harness, taken while other agents' test suites "
                     "were running on the same 2-core machine. The numbers are noisy and are not the issue's "
                     "figures; a run of `python -m bench all` on a quiet machine replaces this section.")
    lines = list(chosen.values())
    if lines:
        parts.append("Machine:\n\n" + machine_block(lines[-1]))
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
                rows.append([name, s["connected"], s["failures"], s["rate_per_s"], s["handshake_p50_ms"],
                             s["handshake_p99_ms"], s["server_cpu_ms_per_connect"]])
        for pair, r in l.get("ratios", {}).items():
            rows.append([f"*{pair}*", "", "", r.get("rate"), "", r.get("handshake_p99_ms"), ""])
        parts.append(f"### connect: {l['n']} authenticated connects, {l['concurrency']} in flight, "
                     f"{next(iter(l['servers'].values()))['replay']} events replayed to each\n\n"
                     + table(["server", "connected", "failures", "connects/s", "ready p50 ms", "ready p99 ms",
                              "server CPU ms/connect"], rows))
    for l in (l for l in lines if l["scenario"] == "idle"):
        rows = []
        for name in ORDER:
            s = l["servers"].get(name)
            if s:
                rows.append([name, s["alive"], s["rss_before_mib"], s["rss_after_mib"], s["kib_per_connection"]])
        for pair, r in l.get("ratios", {}).items():
            rows.append([f"*{pair}*", "", "", "", r.get("kib_per_connection")])
        parts.append(f"### idle: RSS per idle authenticated connection, N = {l['n']}\n\n"
                     + table(["server", "connections", "RSS before MiB", "RSS after MiB", "KiB per connection"], rows))
    for l in (l for l in lines if l["scenario"] == "emit"):
        rows = []
        for name in ORDER:
            s = l["servers"].get(name)
            if s:
                rows.append([name, s["offered_per_s"], s["stored"], s["stored_per_s"], s["p50_ms"], s["p99_ms"],
                             s["max_ms"], s["server_cpu_s"], f"{s['delivered']}/{s['expected']}"])
        for pair, r in l.get("ratios", {}).items():
            rows.append([f"*{pair}*", "", "", r.get("rate"), "", r.get("p99_ms"), "", "", ""])
        parts.append(f"### emit: {l['subscribers']} subscribers (one kiosk room each), SQLite store, "
                     f"{l['offered_per_s']:g} events/s offered for {l['seconds']:g} s, {l['via']}\n\n"
                     + table(["server", "offered/s", "stored", "stored/s", "p50 ms", "p99 ms", "max ms",
                              "server CPU s", "delivered"], rows))
    for l in (l for l in lines if l["scenario"] == "workers"):
        parts.append(f"### workers: {l['n']} clients, {l['workers']} worker processes + Redis\n\n"
                     + table(["N", "server", "p50 ms", "p95 ms", "p99 ms", "max ms", "server CPU s", "delivered"],
                             latency_rows(l)))
    parts.append("Targets (as the JSON lines evaluate them):\n\n" + targets(lines))
    return "\n\n".join(parts)


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
    for name, style in zip(ORDER, ("o-", "s--", "^:")):
        points = [(l["n"], l["servers"][name]) for l in fanout if name in l["servers"]]
        if not points:
            continue
        for ax, key in zip(axes, ("p50_ms", "p99_ms")):
            ax.plot([n for n, _ in points], [s[key] for _, s in points], style, label=name)
    for ax, title in zip(axes, ("p50", "p99")):
        ax.set_title(f"fan-out delivery latency, {title}")
        ax.set_xlabel("clients on one namespace (N)")
        ax.set_ylabel("ms (broadcast trigger to client receipt)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    quick = preliminary or any(l.get("quick") for l in fanout)
    fig.suptitle("eformws vs bare Autobahn (floor) vs python-socketio (peer)" + (" — preliminary" if quick else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(results: Path, quick: bool = False, doc: Path = DOC) -> None:
    """Rewrite `doc` between the markers (a new page when it has none) and the plot beside
    it (`performance-fanout.png` in the same folder)."""
    chosen = latest(results)
    preliminary = quick or any(l.get("quick") for l in chosen.values())
    body = render(chosen, preliminary)
    text = doc.read_text() if doc.exists() else ""
    if START not in text:
        text = f"{text or '# Performance'}\n\n{START}\n{END}\n"
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    doc.write_text(f"{head}{START}\n{body}\n{END}{tail}")
    image = doc.parent / PLOT.name
    plotted = plot(chosen, image, preliminary)
    print(f"wrote {doc}" + (f" and {image}" if plotted else " (no plot: matplotlib missing or no fanout)"))


if __name__ == "__main__":
    import sys

    write_report(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "results.jsonl")
