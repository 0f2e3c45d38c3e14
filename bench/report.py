"""Turning a run's results into results.json, results.md and PNG plots.

The scenarios where clients publish (issue 12) are reported by
:mod:`bench.report_publishing`, called from here.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .scenarios import QUEUE_LIMIT

PEERS = ("tidings", "fastapi", "socketio", "bare")
LABELS = {
    "tidings": "Tidings",
    "fastapi": "FastAPI ConnectionManager",
    "socketio": "python-socketio",
    "bare": "bare asyncio (ceiling)",
}
COLORS = {"tidings": "#1f77b4", "fastapi": "#2ca02c", "socketio": "#d62728", "bare": "#7f7f7f"}
VERSIONED = (
    "tidings",
    "uvicorn",
    "websockets",
    "fastapi",
    "starlette",
    "python-socketio",
    "python-engineio",
    "uvloop",
    "httptools",
    "orjson",
    "picows",
)


# --- the machine and the software ---------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": memory,
        "kernel": platform.release(),
        "os": platform.platform(),
    }


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


# --- reading the results ------------------------------------------------------------


# Where a run ran, when a lookup does not say: Tidings' memory broker, one node.
DEPLOYMENT = {"broker": "memory", "nodes": 1}


def _find(runs: list[dict[str, Any]], scenario: str, **match: Any) -> list[dict[str, Any]]:
    match = {**DEPLOYMENT, **match}
    return [
        r
        for r in runs
        if r["scenario"] == scenario
        and all(r.get(k, DEPLOYMENT.get(k)) == v for k, v in match.items())
    ]


def _one(runs: list[dict[str, Any]], scenario: str, **match: Any) -> dict[str, Any] | None:
    found = [r for r in _find(runs, scenario, **match) if "error" not in r]
    return found[0] if found else None


def _rate(run: dict[str, Any] | None) -> float | None:
    if run is None:
        return None
    return float(run["rate"])


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def _fmt_rate(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 10_000:
        return f"{v / 1000:,.0f}k"
    if v >= 1000:
        return f"{v / 1000:,.1f}k"
    return f"{v:,.0f}"


def _fmt_ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _kib(v: float | None) -> str:
    return "-" if v is None else f"{v / 1024:,.1f}"


def _mib(v: float | None) -> str:
    return "-" if v is None else f"{v / (1 << 20):,.1f}"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The numbers the tables, the plots and the targets use."""
    summary: dict[str, Any] = {"fanout": {}, "targets": []}
    sizes = sorted({r["subs"] for r in _find(runs, "fanout")})
    for subs in sizes:
        row = {p: _rate(_one(runs, "fanout", peer=p, subs=subs)) for p in PEERS}
        summary["fanout"][subs] = row
    targets = summary["targets"]
    for subs in (1000, 5000):
        if subs not in summary["fanout"]:
            continue
        row = summary["fanout"][subs]
        for peer, need in (("fastapi", 2.5), ("socketio", 8.0), ("bare", 1.0)):
            ratio = _ratio(row.get("tidings"), row.get(peer))
            targets.append(
                {
                    "target": f"fan-out at {subs:,} subscribers >= {need:g}x {LABELS[peer]}",
                    "measured": _fmt_ratio(ratio),
                    "met": ratio is not None and ratio >= need,
                    "short_by": None if ratio is None else max(0.0, need - ratio),
                }
            )
    for rate in sorted({r["publish_rate"] for r in _find(runs, "latency")}):
        lat_t = _one(runs, "latency", peer="tidings", publish_rate=rate)
        lat_b = _one(runs, "latency", peer="bare", publish_rate=rate)
        if lat_t and lat_b:
            p99_t, p99_b = lat_t["latency"]["p99_ms"], lat_b["latency"]["p99_ms"]
            targets.append(
                {
                    "target": f"p99 latency at {rate:g}/s no worse than the bare ceiling's",
                    "measured": f"{p99_t:.1f} ms vs {p99_b:.1f} ms",
                    "met": p99_t <= p99_b,
                }
            )
    for deflate, limit in ((False, 8 * 1024), (True, 40 * 1024)):
        mem = _one(runs, "memory", peer="tidings", deflate=deflate)
        if mem:
            per = mem["bytes_per_connection"]
            targets.append(
                {
                    "target": f"idle connection < {limit // 1024} KiB, deflate "
                    + ("on" if deflate else "off"),
                    "measured": f"{per / 1024:.1f} KiB",
                    "met": per < limit,
                }
            )
    for size in sorted({r["size"] for r in _find(runs, "slow", peer="tidings")}):
        base = _one(runs, "slow", peer="tidings", size=size, with_slow=False)
        slow = _one(runs, "slow", peer="tidings", size=size, with_slow=True)
        if not base or not slow:
            continue
        loss = 1 - slow["rate"] / base["rate"] if base["rate"] else 1.0
        targets.append(
            {
                "target": f"slow client, {size // 1024} KiB: others lose < 10%",
                "measured": f"{100 * loss:.1f}%",
                "met": loss < 0.10,
            }
        )
        # What the slow client adds: growth with it, less growth without it.
        growth = slow["rss_growth"] - base["rss_growth"]
        targets.append(
            {
                "target": f"slow client, {size // 1024} KiB: memory grows < 2x the queue "
                f"limit ({2 * QUEUE_LIMIT >> 20} MiB) over the baseline",
                "measured": f"{growth / (1 << 20):.1f} MiB "
                f"({slow['rss_growth'] / (1 << 20):.1f} - {base['rss_growth'] / (1 << 20):.1f})",
                "met": growth < 2 * QUEUE_LIMIT,
            }
        )
        codes = [s.get("close_code") for s in slow.get("slow", [])]
        targets.append(
            {
                "target": f"slow client, {size // 1024} KiB: disconnected with 3008",
                "measured": ", ".join(str(c) for c in codes) or "-",
                "met": bool(codes) and all(c == 3008 for c in codes),
            }
        )
    from . import report_publishing

    summary["publishing"] = report_publishing.summarize(runs)
    return summary


# --- markdown -------------------------------------------------------------------------


def targets_section(title: str, targets: list[dict[str, Any]]) -> list[str]:
    """A heading and a table of targets: what was asked, what was measured, met or not."""
    rows = ([t["target"], t["measured"], "yes" if t["met"] else "**no**"] for t in targets)
    return [f"## {title}", "", _table(["target", "measured", "met"], rows), ""]


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _outcome(run: dict[str, Any]) -> str:
    if "error" in run:
        return f"error: {run['error']}"
    if run.get("stalled"):
        return f"**stalled** (publisher blocked; {run['published']:,} published)"
    slow = run.get("slow") or []
    parts = []
    for s in slow:
        code = s.get("close_code")
        if s.get("closed"):
            parts.append(f"closed {code}" if code not in (None, 1006) else "dropped (no close)")
        else:
            parts.append(f"still open, {s['count']:,} received")
    return "; ".join(parts) or "-"


def markdown(results: dict[str, Any]) -> str:
    runs: list[dict[str, Any]] = results["runs"]
    meta = results["meta"]
    summary = results["summary"]
    m = meta["machine"]
    out = [
        f"# Benchmark results ({meta['scale']['name']})",
        "",
        f"Command: `{meta['command']}`  ",
        f"Started {meta['started']}, took {meta['seconds']:.0f} s.  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_bytes'] / (1 << 30):.1f} GiB, "
        f"Linux {m['kernel']}.  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".  ",
        f"Load generator: {meta['processes']} processes (picows); "
        + (
            f"server pinned to CPU {meta['server_cpus']}, generators to {meta['client_cpus']}."
            if meta.get("server_cpus")
            else "no CPU pinning."
        ),
        "",
    ]
    if summary["targets"]:
        out += targets_section("Targets (issue 6)", summary["targets"])
    fan = _find(runs, "fanout")
    if fan:
        out += [
            "## (a) Fan-out throughput, one channel",
            "",
            "Delivered messages/s (100-byte payloads), and Tidings' ratio to each peer.",
            "",
        ]
        rows = []
        for subs, row in summary["fanout"].items():
            t = row.get("tidings")
            rows.append(
                [f"{subs:,}"]
                + [_fmt_rate(row.get(p)) for p in PEERS]
                + [_fmt_ratio(_ratio(t, row.get(p))) for p in PEERS[1:]]
            )
        out.append(
            _table(
                ["subscribers", *[LABELS[p] for p in PEERS], "÷ FastAPI", "÷ socketio", "÷ bare"],
                rows,
            )
        )
        out += ["", "Loss check and CPU (cores) during each measurement:", ""]
        out.append(
            _table(
                [
                    "peer",
                    "subs",
                    "published",
                    "delivered/expected",
                    "clients short",
                    "server CPU",
                    "generator CPU",
                    "machine CPU",
                    "other load",
                    "connect s",
                ],
                (
                    [
                        r["peer"],
                        f"{r['subs']:,}",
                        f"{r.get('published', 0):,}",
                        f"{r.get('delivered', 0):,}/{r.get('expected', 0):,}",
                        str(r.get("clients_short", "-")),
                        f"{r.get('server_cpu', 0):.2f}",
                        f"{r.get('generator_cpu', 0):.2f}",
                        f"{r.get('machine_cpu', 0):.2f}",
                        f"{r.get('external_cpu', 0):.2f}",
                        f"{r.get('connect_seconds', 0):.1f}",
                    ]
                    if "error" not in r
                    else [r["peer"], f"{r['subs']:,}", "error: " + r["error"], *[""] * 7]
                    for r in fan
                ),
            )
        )
        out.append("")
    lat = _find(runs, "latency")
    if lat:
        r0 = lat[0]
        out += [
            f"## (b) Latency at a fixed publication rate, {r0['subs']:,} subscribers",
            "",
            "From the publisher's send time (in the payload) to each subscriber's receipt.",
            "",
        ]
        out.append(
            _table(
                ["peer", "publications/s", "p50 ms", "p99 ms", "max ms", "published", "delivered"],
                (
                    [
                        LABELS[r["peer"]],
                        f"{r['publish_rate']:g}",
                        _ms(r["latency"]["p50_ms"]),
                        _ms(r["latency"]["p99_ms"]),
                        _ms(r["latency"]["max_ms"]),
                        f"{r['published']:,} of {r['planned']:,}",
                        f"{r['delivered']:,}/{r['expected']:,}",
                    ]
                    if "error" not in r
                    else [LABELS[r["peer"]], f"{r['publish_rate']:g}", "error: " + r["error"]]
                    + [""] * 4
                    for r in lat
                ),
            )
        )
        out.append("")
    chans = _find(runs, "channels")
    if chans:
        tid = _rate(_one(runs, "channels", peer="tidings"))
        out += [
            f"## (c) {chans[0]['channels']:,} channels, one subscriber each, round-robin",
            "",
        ]
        out.append(
            _table(
                ["peer", "messages/s", "Tidings ÷ peer", "delivered/expected"],
                (
                    [
                        LABELS[r["peer"]],
                        _fmt_rate(r["rate"]),
                        _fmt_ratio(_ratio(tid, r["rate"])),
                        f"{r['delivered']:,}/{r['expected']:,}",
                    ]
                    if "error" not in r
                    else [LABELS[r["peer"]], "error: " + r["error"], "", ""]
                    for r in chans
                ),
            )
        )
        out.append("")
    mem = _find(runs, "memory")
    if mem:
        out += [
            f"## (d) Memory per idle connection ({mem[0]['conns']:,} connections, RSS delta)",
            "",
        ]
        rows = []
        for p in PEERS:
            off = _one(runs, "memory", peer=p, deflate=False)
            on = _one(runs, "memory", peer=p, deflate=True)
            if off is None and on is None:
                continue
            rows.append(
                [
                    LABELS[p],
                    _kib(off["bytes_per_connection"] if off else None),
                    _kib(on["bytes_per_connection"] if on else None),
                    f"{on['deflate_negotiated']:,}/{on['connected']:,}" if on else "-",
                ]
            )
        out.append(
            _table(["peer", "KiB, deflate off", "KiB, deflate on", "deflate negotiated"], rows)
        )
        out.append("")
    slow = _find(runs, "slow")
    if slow:
        out += [
            f"## (e) One subscriber stops reading ({slow[0]['others']:,} others)",
            "",
        ]
        rows = []
        for p in PEERS:
            for size in sorted({r["size"] for r in slow}):
                base = _one(runs, "slow", peer=p, size=size, with_slow=False)
                with_slow = next(iter(_find(runs, "slow", peer=p, size=size, with_slow=True)), None)
                if base is None and with_slow is None:
                    continue
                b_rate = base["rate"] if base else None
                s_rate = with_slow.get("rate") if with_slow else None
                loss = (
                    f"{100 * (1 - s_rate / b_rate):.1f}%" if b_rate and s_rate is not None else "-"
                )
                rows.append(
                    [
                        LABELS[p],
                        f"{size // 1024} KiB",
                        _fmt_rate(b_rate),
                        _fmt_rate(s_rate),
                        loss,
                        _mib(base["rss_growth"] if base else None),
                        _mib(with_slow.get("rss_growth") if with_slow else None),
                        _outcome(with_slow) if with_slow else "-",
                    ]
                )
        out.append(
            _table(
                [
                    "peer",
                    "message",
                    "others' msg/s, baseline",
                    "with slow client",
                    "others lose",
                    "RSS growth MiB, baseline",
                    "with slow client",
                    "slow client",
                ],
                rows,
            )
        )
        out.append("")
    storm = _find(runs, "storm")
    if storm:
        out += [
            f"## (f) Connection storm ({storm[0]['conns']:,} clients connect and subscribe)",
            "",
        ]
        out.append(
            _table(
                ["peer", "channel", "connects+subscribes/s", "p50 ms", "p99 ms", "failed"],
                (
                    [
                        LABELS[r["peer"]],
                        f"`{r['channel']}`",
                        _fmt_rate(r["rate"]),
                        _ms(r["connect_p50"] * 1000),
                        _ms(r["connect_p99"] * 1000),
                        str(r["connect_failed"]),
                    ]
                    if "error" not in r
                    else [
                        LABELS[r["peer"]],
                        f"`{r['channel']}`",
                        "error: " + r["error"],
                        "",
                        "",
                        "",
                    ]
                    for r in storm
                ),
            )
        )
        out.append("")
    rec = _find(runs, "recovery")
    if rec:
        out += ["## (g) Recovery after a mass reconnect (Tidings)", ""]
        out.append(
            _table(
                [
                    "clients",
                    "missed each",
                    "reconnected",
                    "recovered",
                    "messages recovered",
                    "seconds",
                    "reconnects/s",
                ],
                (
                    [
                        f"{r['clients']:,}",
                        str(r["missed"]),
                        f"{r['reconnected']:,}",
                        f"{r['recovered']:,}",
                        f"{r['recovered_messages']:,}/{r['expected_messages']:,}",
                        f"{r['seconds']:.2f}",
                        _fmt_rate(r["rate"]),
                    ]
                    if "error" not in r
                    else [f"{r['clients']:,}", "error: " + r["error"], "", "", "", "", ""]
                    for r in rec
                ),
            )
        )
        out.append("")
    if "publishing" in summary:
        from . import report_publishing

        out += report_publishing.markdown(runs, summary["publishing"])
    prof = results.get("profile")
    if prof and prof.get("samples"):
        out += [
            f"## Profile: Tidings under (a), {prof['subs']:,} subscribers",
            "",
            f"py-spy, {prof['samples']:,} samples at {prof['rate']} Hz of the server process "
            f"(idle excluded); raw stacks in `{prof['file']}`.",
            "",
            "Self time (the frame on top of the stack):",
            "",
        ]
        out.append(
            _table(
                ["share", "function"],
                ([f"{100 * s:.1f}%", f"`{f}`"] for f, s in prof["top_self"]),
            )
        )
        out += ["", "Time by library (self time):", ""]
        out.append(_table(["share", "where"], ([f"{100 * s:.1f}%", w] for w, s in prof["by_area"])))
        out.append("")
    return "\n".join(out) + "\n"


# --- the profile ----------------------------------------------------------------------

AREAS = (
    ("tidings/hub/session.py", "tidings: session (queue, writer task)"),
    ("tidings/hub/hub.py", "tidings: hub (fan-out loop)"),
    ("tidings/transport", "tidings: transport adapter"),
    ("tidings/", "tidings: other"),
    ("starlette/", "starlette (WebSocket.send, exception wrapper)"),
    ("uvicorn/protocols/websockets", "uvicorn websockets-sansio protocol (incl. transport.write)"),
    ("websockets/", "websockets (frame encoding)"),
    (
        "Runner.run (asyncio/runners.py",
        "event loop: uvloop C code (callbacks, epoll, socket reads)",
    ),
    ("asyncio/", "asyncio (tasks, events)"),
    ("bench/", "benchmark publisher"),
)


def analyse_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares per function, and self time per library."""
    self_time: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    if not path.exists():
        return {"samples": 0}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        self_time[frames[-1]] = self_time.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    if not total:
        return {"samples": 0}
    areas: dict[str, int] = {}
    for frame, n in self_time.items():
        where = "other (event loop, interpreter)"
        for needle, name in AREAS:
            if needle in frame:
                where = name
                break
        areas[where] = areas.get(where, 0) + n

    def ranked(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, v / total) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {
        "samples": total,
        "top_self": ranked(self_time),
        "top_inclusive": ranked(inclusive),
        "by_area": ranked(areas),
    }


# --- plots --------------------------------------------------------------------------------


def plots(results: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    made: list[str] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.append(name)

    fan = results["summary"]["fanout"]
    if fan:
        fig, ax = plt.subplots(figsize=(7, 4))
        xs = sorted(fan)
        for p in PEERS:
            ys = [fan[x].get(p) for x in xs]
            pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=LABELS[p], color=COLORS[p])
        ax.set_xscale("log")
        ax.set_xlabel("subscribers on one channel")
        ax.set_ylabel("delivered messages/s")
        ax.set_title("(a) Fan-out throughput")
        ax.grid(alpha=0.3)
        ax.legend()
        save(fig, "fanout.png")
    lat = [r for r in _find(runs, "latency") if "error" not in r]
    if lat:
        fig, ax = plt.subplots(figsize=(8, 4))
        names = [f"{LABELS[r['peer']]}\n{r['publish_rate']:g}/s" for r in lat]
        for i, key in enumerate(("p50_ms", "p99_ms", "max_ms")):
            ax.bar(
                [j + (i - 1) * 0.27 for j in range(len(lat))],
                [max(0.01, r["latency"][key]) for r in lat],
                width=0.27,
                label=key.split("_")[0],
            )
        ax.set_xticks(range(len(lat)), names, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("ms")
        ax.set_title(f"(b) Delivery latency at a fixed rate, {lat[0]['subs']:,} subscribers")
        ax.legend()
        save(fig, "latency.png")
    mem = [r for r in _find(runs, "memory") if "error" not in r]
    if mem:
        fig, ax = plt.subplots(figsize=(7, 4))
        peers = [p for p in PEERS if any(r["peer"] == p for r in mem)]
        for i, deflate in enumerate((False, True)):
            vals = []
            for p in peers:
                r = _one(runs, "memory", peer=p, deflate=deflate)
                vals.append(r["bytes_per_connection"] / 1024 if r else 0)
            ax.bar(
                [j + (i - 0.5) * 0.4 for j in range(len(peers))],
                vals,
                width=0.4,
                label=f"deflate {'on' if deflate else 'off'}",
            )
        ax.set_xticks(range(len(peers)), [LABELS[p] for p in peers], rotation=10)
        ax.set_ylabel("KiB per idle connection")
        ax.set_title("(d) Memory per idle connection")
        ax.legend()
        save(fig, "memory.png")
    slow = _find(runs, "slow")
    if slow:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        sizes = sorted({r["size"] for r in slow})
        peers = [p for p in PEERS if any(r["peer"] == p for r in slow)]
        for i, size in enumerate(sizes):
            rel, growth = [], []
            for p in peers:
                base = _one(runs, "slow", peer=p, size=size, with_slow=False)
                s = next(iter(_find(runs, "slow", peer=p, size=size, with_slow=True)), None)
                ok = base and s and "error" not in s and base["rate"]
                rel.append(100 * s["rate"] / base["rate"] if ok and s and base else 0)
                growth.append(s["rss_growth"] / (1 << 20) if s and "error" not in s else 0)
            xs = [j + (i - 0.5) * 0.4 for j in range(len(peers))]
            ax1.bar(xs, rel, width=0.4, label=f"{size // 1024} KiB")
            ax2.bar(xs, growth, width=0.4, label=f"{size // 1024} KiB")
        for ax in (ax1, ax2):
            ax.set_xticks(range(len(peers)), [LABELS[p] for p in peers], rotation=15)
            ax.legend()
        ax1.axhline(90, color="k", lw=0.8, ls="--")
        ax1.set_ylabel("others' throughput, % of baseline")
        ax2.axhline(2 * QUEUE_LIMIT / (1 << 20), color="k", lw=0.8, ls="--")
        ax2.set_ylabel("server RSS growth, MiB")
        ax2.set_yscale("symlog")
        fig.suptitle("(e) One subscriber stops reading")
        save(fig, "slow.png")
    storm = [r for r in _find(runs, "storm") if "error" not in r]
    if storm:
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = [f"{LABELS[r['peer']]}\n{r['channel']}" for r in storm]
        ax.bar(
            range(len(storm)), [r["rate"] for r in storm], color=[COLORS[r["peer"]] for r in storm]
        )
        ax.set_xticks(range(len(storm)), labels, fontsize=8)
        ax.set_ylabel("connects + subscribes per second")
        ax.set_title(f"(f) Connection storm, {storm[0]['conns']:,} clients")
        save(fig, "storm.png")
    from . import report_publishing

    report_publishing.plots(runs, out, save, plt)
    return made
