"""The report of issue 12's scenarios, where clients publish: (a) with a client
publishing, (h) round trip, (i) clients publishing at rising rates, (j) the HTTP
API, (k) Tidings on Redis, (l) the connect storm. Tables, targets and plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import (
    COLORS,
    LABELS,
    PEERS,
    _find,
    _fmt_rate,
    _fmt_ratio,
    _ms,
    _one,
    _rate,
    _ratio,
    _table,
    targets_section,
)

MODES = (("back_to_back", "back-to-back"), ("paced", "paced"))
DEPLOYMENTS = (("memory", 1), ("redis", 1), ("redis", 2))


def _config_name(config: Any) -> str:
    return "chat-like mix" if config == "chat" else f"{config:,} subscriber(s) per channel"


def _configs(runs: list[dict[str, Any]]) -> list[Any]:
    found = {r["config"] for r in runs if r["scenario"] == "pubsub"}
    numbers = sorted(c for c in found if c != "chat")
    return [*numbers, *(["chat"] if "chat" in found else [])]


def _sustained(run: dict[str, Any] | None) -> float | None:
    """Publications/s of the highest step with p99 under the limit (0: none passed)."""
    if run is None:
        return None
    best = run.get("sustainable")
    return float(best["publications_per_second"]) if best else 0.0


def _p50(run: dict[str, Any] | None, mode: str) -> float | None:
    return None if run is None else float(run[mode]["p50_ms"])


def _where(broker: str, nodes: int) -> str:
    return "memory" if broker == "memory" else f"Redis, {nodes} node" + "s" * (nodes > 1)


def _fmt(unit: str, v: float | None) -> str:
    """A rate (``rate``), milliseconds to 3 decimals (``ms``), or seconds (``s``)."""
    if v is None:
        return "-"
    if unit == "ms":
        return f"{v:,.3f}"
    if unit == "s":
        return f"{v:,.2f}"
    return _fmt_rate(v)


# --- numbers and targets ----------------------------------------------------------------


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Ratios of Tidings to each peer, and the targets of issue 12."""
    ratios: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []

    def ratio_row(name: str, values: dict[str, float | None], unit: str = "rate") -> None:
        t = values.get("tidings")
        ratios.append(
            {
                "scenario": name,
                "unit": unit,
                "lower_is_better": unit != "rate",
                "values": values,
                "ratios": {p: _ratio(t, values.get(p)) for p in PEERS[1:]},
            }
        )

    def target(name: str, measured: str, met: bool) -> None:
        targets.append({"target": name, "measured": measured, "met": met})

    for subs in sorted({r["subs"] for r in _find(runs, "fanout_client")}):
        values = {p: _rate(_one(runs, "fanout_client", peer=p, subs=subs)) for p in PEERS}
        ratio_row(f"(a) client publishing, {subs:,} subscribers, msg/s", values)
        r = _ratio(values.get("tidings"), values.get("bare"))
        if r is not None:
            target(
                f"(a) client publishing, {subs:,} subscribers: >= 1.5x bare", f"{r:.2f}x", r >= 1.5
            )
    for mode, label in MODES:
        values = {p: _p50(_one(runs, "roundtrip", peer=p), mode) for p in PEERS}
        if not any(v is not None for v in values.values()):
            continue
        ratio_row(f"(h) round trip p50 ms, {label} (lower is better)", values, "ms")
        t, fastapi, bare = values.get("tidings"), values.get("fastapi"), values.get("bare")
        if t is not None and fastapi is not None:
            target(
                f"(h) {label} p50 no worse than FastAPI ConnectionManager",
                f"{t:.3f} ms vs {fastapi:.3f} ms",
                t <= fastapi,
            )
        if t is not None and bare is not None and bare > 0:
            target(
                f"(h) {label} p50 at most 1.3x bare",
                f"{t / bare:.2f}x ({t:.3f} ms vs {bare:.3f} ms)",
                t <= 1.3 * bare,
            )
    for config in _configs(runs):
        values = {p: _sustained(_one(runs, "pubsub", peer=p, config=config)) for p in PEERS}
        ratio_row(f"(i) {_config_name(config)}, sustainable publications/s", values)
        t = values.get("tidings")
        if config == 1 and t is not None and values.get("fastapi") is not None:
            r = _ratio(t, values["fastapi"])
            target(
                "(i) 1 subscriber per channel: >= 1.5x FastAPI ConnectionManager",
                _fmt_ratio(r) if r is not None else f"{t:,.0f} vs 0",
                r is None or r >= 1.5,
            )
        if config == "chat" and t is not None:
            others = {p: v for p, v in values.items() if p != "tidings" and v is not None}
            if others:
                target(
                    "(i) chat-like mix: higher sustainable rate than every peer",
                    f"{t:,.0f}/s vs " + ", ".join(f"{p} {v:,.0f}/s" for p, v in others.items()),
                    all(t > v for v in others.values()),
                )
    for clients in sorted({r["clients"] for r in _find(runs, "api")}):
        values = {p: _rate(_one(runs, "api", peer=p, clients=clients)) for p in PEERS}
        ratio_row(f"(j) HTTP API, {clients} clients, publications/s", values)
    storm = {p: _one(runs, "connect_storm", peer=p) for p in PEERS}
    if any(storm.values()):
        values = {
            p: (r["seconds_all"] if r and r["seconds_all"] else None) for p, r in storm.items()
        }
        ratio_row("(l) connect storm, seconds until all subscribed (lower is better)", values, "s")
    # (k): Tidings on Redis against Tidings on memory.
    for nodes in sorted({r["nodes"] for r in runs if r.get("broker") == "redis"}):
        if nodes != 1:
            continue
        for scenario, label in (("fanout", "(a)"), ("fanout_client", "(a) client publishing")):
            for run in _find(runs, scenario, peer="tidings", broker="redis", nodes=1):
                base = _rate(_one(runs, scenario, peer="tidings", subs=run["subs"]))
                r = _ratio(_rate(run) if "error" not in run else None, base)
                target(
                    f"(k) {label}, {run['subs']:,} subscribers: Redis (1 node) >= 0.5x memory",
                    _fmt_ratio(r),
                    r is not None and r >= 0.5,
                )
        for config in _configs(runs):
            redis = _sustained(_one(runs, "pubsub", peer="tidings", config=config, broker="redis"))
            base = _sustained(_one(runs, "pubsub", peer="tidings", config=config))
            r = _ratio(redis, base)
            target(
                f"(k) (i) {_config_name(config)}: Redis (1 node) >= 0.5x memory",
                _fmt_ratio(r),
                r is not None and r >= 0.5,
            )
    return {"ratios": ratios, "targets": targets}


# --- markdown ---------------------------------------------------------------------------------


def _ratio_cells(t: float | None, values: dict[str, float | None]) -> list[str]:
    return [_fmt_ratio(_ratio(t, values.get(p))) for p in PEERS[1:]]


def markdown(runs: list[dict[str, Any]], summary: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if summary["targets"]:
        out += targets_section("Targets (issue 12)", summary["targets"])
    if summary["ratios"]:
        out += [
            "## Clients publishing (issue 12): Tidings ÷ each peer",
            "",
            "Each peer's figure and Tidings' ratio to it; for a time (lower is better) a "
            "ratio under 1 is Tidings ahead.",
            "",
        ]
        rows = []
        for row in summary["ratios"]:
            values = row["values"]
            rows.append(
                [row["scenario"]]
                + [_fmt(row["unit"], values.get(p)) for p in PEERS]
                + [_fmt_ratio(row["ratios"].get(p)) for p in PEERS[1:]]
            )
        out.append(
            _table(
                ["scenario", *[LABELS[p] for p in PEERS], "÷ FastAPI", "÷ socketio", "÷ bare"],
                rows,
            )
        )
        out.append("")
    fc = _find(runs, "fanout_client")
    if fc:
        out += [
            "## (a) Fan-out, a client publishing",
            "",
            "One of the subscribers publishes over the protocol, closed-loop (at most a "
            "window of publications ahead of the slowest subscriber); delivered msg/s, "
            "and the in-process publisher's figure from (a) beside it.",
            "",
        ]
        rows = []
        for r in fc:
            inproc = _rate(_one(runs, "fanout", peer=r["peer"], subs=r["subs"]))
            rows.append(
                [LABELS[r["peer"]], f"{r['subs']:,}"]
                + (
                    [
                        _fmt_rate(r["rate"]),
                        _fmt_rate(inproc),
                        f"{r['delivered']:,}/{r['expected']:,}",
                        f"{r['server_cpu']:.2f}",
                        f"{r['generator_cpu']:.2f}",
                    ]
                    if "error" not in r
                    else ["error: " + r["error"], "", "", "", ""]
                )
            )
        out.append(
            _table(
                [
                    "peer",
                    "subs",
                    "msg/s",
                    "in-process publisher (a)",
                    "delivered/expected",
                    "server CPU",
                    "generator CPU",
                ],
                rows,
            )
        )
        out.append("")
    rtt = _find(runs, "roundtrip")
    if rtt:
        out += [
            "## (h) Round trip: a client publishes and waits for its own publication",
            "",
            "One subscriber, which publishes; back-to-back (the next publish as soon as "
            "its publication arrives) and paced (a pause of ~2 ms first). Milliseconds.",
            "",
        ]
        rows = []
        for r in rtt:
            if "error" in r:
                rows.append([LABELS[r["peer"]], "error: " + r["error"], *[""] * 7])
                continue
            cells = [LABELS[r["peer"]]]
            for mode, _ in MODES:
                m = r[mode]
                cells += [f"{m['p50_ms']:.3f}", f"{m['p99_ms']:.3f}", f"{m['max_ms']:.2f}"]
            cells += [
                f"{r['back_to_back']['round_trips']:,} + {r['paced']['round_trips']:,}",
                str(r["back_to_back"]["timeouts"] + r["paced"]["timeouts"]),
            ]
            rows.append(cells)
        out.append(
            _table(
                [
                    "peer",
                    "back-to-back p50",
                    "p99",
                    "max",
                    "paced p50",
                    "p99",
                    "max",
                    "round trips",
                    "timeouts",
                ],
                rows,
            )
        )
        out.append("")
    if _find(runs, "pubsub"):
        out += [
            "## (i) Clients publishing: the highest rate with p99 under 100 ms",
            "",
            "Publishing clients at a fixed rate (open loop), in steps of rising rate; a step "
            "passes when the delivery latency's p99 is under 100 ms, nothing is lost and the "
            "clients sent what was planned. The highest step passed, and the latency there.",
            "",
        ]
        for config in _configs(runs):
            found = _find(runs, "pubsub", config=config)
            if not found:
                continue
            first = next((r for r in found if "error" not in r), None)
            head = f"### {_config_name(config)}"
            if first is not None:
                head += (
                    f" ({first['channels']:,} channels, {first['members']:,} clients, "
                    f"{first['publishers']:,} publishing)"
                )
            out += [head, ""]
            t = _sustained(_one(runs, "pubsub", peer="tidings", config=config))
            rows = []
            for r in found:
                if "error" in r:
                    rows.append([LABELS[r["peer"]], "error: " + r["error"], *[""] * 6])
                    continue
                best = r["sustainable"]
                steps = " ".join(
                    f"{st['planned_rate']:,.0f}{'✓' if st['ok'] else '✗'}" for st in r["steps"]
                )
                rows.append(
                    [
                        LABELS[r["peer"]],
                        _fmt_rate(best["publications_per_second"]) if best else "none",
                        _fmt_rate(best["deliveries_per_second"]) if best else "-",
                        _ms(best["p50_ms"]) if best else "-",
                        _ms(best["p99_ms"]) if best else "-",
                        _fmt_ratio(_ratio(t, _sustained(r))),
                        f"{r['lost']:,}",
                        steps + ("" if r["limit_found"] else " (no limit found)"),
                    ]
                )
            out.append(
                _table(
                    [
                        "peer",
                        "publications/s",
                        "deliveries/s",
                        "p50 ms",
                        "p99 ms",
                        "Tidings ÷ peer",
                        "lost",
                        "steps (publications/s)",
                    ],
                    rows,
                )
            )
            out.append("")
    api = _find(runs, "api")
    if api:
        out += [
            f"## (j) Publishing through POST /api/publish ({api[0]['subs']:,} subscribers)",
            "",
            "Concurrent HTTP/1.1 keep-alive clients, each posting one publication after "
            "another; publications/s answered 200, the request's latency, and the delivery "
            "latency to the subscribers.",
            "",
        ]
        rows = []
        for r in api:
            if "error" in r:
                rows.append(
                    [LABELS[r["peer"]], str(r["clients"]), "error: " + r["error"], *[""] * 6]
                )
                continue
            t = _rate(_one(runs, "api", peer="tidings", clients=r["clients"]))
            rows.append(
                [
                    LABELS[r["peer"]],
                    str(r["clients"]),
                    _fmt_rate(r["rate"]),
                    _ms(r["request"]["p50_ms"]),
                    _ms(r["request"]["p99_ms"]),
                    _ms(r["latency"]["p99_ms"]),
                    _fmt_ratio(_ratio(t, r["rate"])),
                    f"{r['delivered']:,}/{r['expected']:,}",
                    ", ".join(f"{k}: {v}" for k, v in r["http_errors"].items()) or "-",
                ]
            )
        out.append(
            _table(
                [
                    "peer",
                    "clients",
                    "publications/s",
                    "request p50 ms",
                    "request p99 ms",
                    "delivery p99 ms",
                    "Tidings ÷ peer",
                    "delivered/expected",
                    "errors",
                ],
                rows,
            )
        )
        out.append("")
    out += _redis_markdown(runs)
    storm = _find(runs, "connect_storm") + _find(runs, "connect_storm", broker="redis")
    if storm:
        out += [
            f"## (l) Connect storm: {storm[0]['conns']:,} clients connect and subscribe at once",
            "",
        ]
        rows = []
        for r in storm:
            where = _where(r["broker"], r["nodes"])
            if "error" in r:
                rows.append([LABELS[r["peer"]], where, "error: " + r["error"], *[""] * 5])
                continue
            rows.append(
                [
                    LABELS[r["peer"]],
                    where,
                    f"{r['connected']:,}",
                    f"{r['refused']:,}",
                    f"{r['seconds_all']:.2f}" if r["seconds_all"] else "-",
                    _ms(r["connect_p50"] * 1000),
                    _ms(r["connect_p99"] * 1000),
                    ", ".join(f"{k}: {v}" for k, v in r["connect_errors"].items()) or "-",
                ]
            )
        out.append(
            _table(
                [
                    "peer",
                    "broker",
                    "subscribed",
                    "refused",
                    "s until all subscribed",
                    "p50 ms",
                    "p99 ms",
                    "errors",
                ],
                rows,
            )
        )
        out.append("")
    return out


Row = tuple[str, str, dict[tuple[str, int], float | None]]


def _redis_rows(runs: list[dict[str, Any]]) -> list[Row]:
    """Measures of Tidings per deployment: (name, unit, {(broker, nodes): value})."""
    rows: list[Row] = []

    def tidings(scenario: str, broker: str, nodes: int, **match: Any) -> dict[str, Any] | None:
        return _one(runs, scenario, peer="tidings", broker=broker, nodes=nodes, **match)

    for scenario, label in (("fanout", "(a)"), ("fanout_client", "(a) client publishing")):
        found = _find(runs, scenario, peer="tidings", broker="redis")
        for subs in sorted({r["subs"] for r in found}):
            values = {(b, n): _rate(tidings(scenario, b, n, subs=subs)) for b, n in DEPLOYMENTS}
            rows.append((f"{label}, {subs:,} subscribers, msg/s", "rate", values))
    if _find(runs, "roundtrip", peer="tidings", broker="redis"):
        for mode, label in MODES:
            for key in ("p50_ms", "p99_ms"):
                values = {}
                for b, n in DEPLOYMENTS:
                    run = tidings("roundtrip", b, n)
                    values[(b, n)] = None if run is None else float(run[mode][key])
                rows.append((f"(h) {label} round trip {key[:3]}, ms", "ms", values))
    for config in _configs(runs):
        if _find(runs, "pubsub", peer="tidings", config=config, broker="redis"):
            values = {
                (b, n): _sustained(tidings("pubsub", b, n, config=config)) for b, n in DEPLOYMENTS
            }
            rows.append((f"(i) {_config_name(config)}, publications/s", "rate", values))
    return rows


def _redis_markdown(runs: list[dict[str, Any]]) -> list[str]:
    rows = _redis_rows(runs)
    if not rows:
        return []
    out = [
        "## (k) Tidings on Redis, one node and two, against its memory broker",
        "",
        "The same measurements with `broker_url = redis://` (a redis-server of the run's "
        "own). Two nodes: two Tidings processes on the same Redis, publishers on the first, "
        "subscribers spread over both. All server-side processes share the server's CPU.",
        "",
    ]
    cells = []
    for name, unit, values in rows:
        base = values.get(("memory", 1))
        cells.append(
            [name]
            + [_fmt(unit, values.get(d)) for d in DEPLOYMENTS]
            + [_fmt_ratio(_ratio(values.get(d), base)) for d in DEPLOYMENTS[1:]]
        )
    out.append(
        _table(
            [
                "measure",
                "memory",
                "Redis, 1 node",
                "Redis, 2 nodes",
                "1 node ÷ memory",
                "2 nodes ÷ memory",
            ],
            cells,
        )
    )
    errors = [r for r in runs if r.get("broker") == "redis" and "error" in r]
    for r in errors:
        out.append(f"\n- {r['scenario']} on {r['nodes']} node(s): error: {r['error']}")
    out.append("")
    return out


# --- plots --------------------------------------------------------------------------------------


def plots(runs: list[dict[str, Any]], out: Path, save: Any, plt: Any) -> None:
    fc = [r for r in _find(runs, "fanout_client") if "error" not in r]
    if fc:
        sizes = sorted({r["subs"] for r in fc})
        fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes) + 2, 4), squeeze=False)
        for ax, subs in zip(axes[0], sizes, strict=True):
            peers = [p for p in PEERS if _one(runs, "fanout_client", peer=p, subs=subs)]
            xs = range(len(peers))
            inproc = [_rate(_one(runs, "fanout", peer=p, subs=subs)) or 0 for p in peers]
            client = [_rate(_one(runs, "fanout_client", peer=p, subs=subs)) or 0 for p in peers]
            ax.bar(
                [x - 0.2 for x in xs],
                inproc,
                width=0.4,
                label="in-process publisher",
                color="#bbbbbb",
            )
            ax.bar(
                [x + 0.2 for x in xs],
                client,
                width=0.4,
                label="a client publishes",
                color=[COLORS[p] for p in peers],
            )
            ax.set_xticks(list(xs), [LABELS[p] for p in peers], rotation=12, fontsize=8)
            ax.set_ylabel("delivered messages/s")
            ax.set_title(f"{subs:,} subscribers")
            ax.legend(fontsize=8)
        fig.suptitle("(a) Fan-out, in-process publisher vs a client publishing")
        save(fig, "fanout_client.png")
    rtt = [r for r in _find(runs, "roundtrip") if "error" not in r]
    if rtt:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, (mode, label) in zip(axes, MODES, strict=True):
            xs = range(len(rtt))
            for i, key in enumerate(("p50_ms", "p99_ms")):
                ax.bar(
                    [x + (i - 0.5) * 0.4 for x in xs],
                    [max(0.001, r[mode][key]) for r in rtt],
                    width=0.4,
                    label=key.split("_")[0],
                )
            ax.set_xticks(list(xs), [LABELS[r["peer"]] for r in rtt], rotation=12, fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("round trip, ms")
            ax.set_title(label)
            ax.legend(fontsize=8)
        fig.suptitle("(h) A client publishes and waits for its own publication")
        save(fig, "roundtrip.png")
    configs = _configs(runs)
    if configs:
        from matplotlib.ticker import NullFormatter

        ncols = min(2, len(configs))
        nrows = -(-len(configs) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(11, 4 * nrows), squeeze=False)
        for ax in axes.flat[len(configs) :]:
            ax.set_visible(False)
        for ax, config in zip(axes.flat, configs, strict=False):
            for r in _find(runs, "pubsub", config=config):
                if "error" in r or not r["steps"]:
                    continue
                pts = sorted(
                    (st["planned_rate"], max(0.01, st["latency"]["p99_ms"])) for st in r["steps"]
                )
                ax.plot(
                    *zip(*pts, strict=True),
                    marker="o",
                    label=LABELS[r["peer"]],
                    color=COLORS[r["peer"]],
                )
            for r in _find(runs, "pubsub", config=config, broker="redis", nodes=1):
                if "error" in r or not r["steps"]:
                    continue
                pts = sorted(
                    (st["planned_rate"], max(0.01, st["latency"]["p99_ms"])) for st in r["steps"]
                )
                ax.plot(
                    *zip(*pts, strict=True),
                    marker="x",
                    ls="--",
                    label="Tidings on Redis",
                    color=COLORS["tidings"],
                )
            ax.axhline(100, color="k", lw=0.8, ls="--")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("publications/s (planned)")
            ax.set_ylabel("delivery p99, ms")
            ax.set_title(_config_name(config), fontsize=9)
            ax.legend(fontsize=7)
        fig.suptitle("(i) Clients publishing: p99 latency as the rate rises")
        save(fig, "pubsub.png")
    api = [r for r in _find(runs, "api") if "error" not in r]
    if api:
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = [f"{LABELS[r['peer']]}\n{r['clients']} clients" for r in api]
        ax.bar(range(len(api)), [r["rate"] for r in api], color=[COLORS[r["peer"]] for r in api])
        ax.set_xticks(range(len(api)), labels, fontsize=7)
        ax.set_ylabel("publications/s (HTTP 200)")
        ax.set_title("(j) POST /api/publish from concurrent HTTP clients")
        save(fig, "api.png")
    rows = [(name, values) for name, unit, values in _redis_rows(runs) if unit == "rate"]
    if rows:
        fig, ax = plt.subplots(figsize=(9, 4))
        names = [name for name, _ in rows]
        for i, d in enumerate(DEPLOYMENTS[1:]):
            vals = []
            for _, values in rows:
                vals.append(_ratio(values.get(d), values.get(("memory", 1))) or 0)
            ax.bar(
                [j + (i - 0.5) * 0.4 for j in range(len(rows))], vals, width=0.4, label=_where(*d)
            )
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(0.5, color="k", lw=0.8, ls="--")
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("÷ Tidings on memory")
        ax.set_title("(k) Tidings on Redis, relative to its memory broker")
        ax.legend(fontsize=8)
        save(fig, "redis.png")
    storm = [
        r
        for r in _find(runs, "connect_storm") + _find(runs, "connect_storm", broker="redis")
        if "error" not in r
    ]
    if storm:
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = [f"{LABELS[r['peer']]}\n{_where(r['broker'], r['nodes'])}" for r in storm]
        ax.bar(
            range(len(storm)),
            [r["seconds_all"] or 0 for r in storm],
            color=[COLORS[r["peer"]] for r in storm],
        )
        for i, r in enumerate(storm):
            if r["refused"]:
                ax.annotate(
                    f"{r['refused']:,} refused",
                    (i, r["seconds_all"] or 0),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color="red",
                )
        ax.set_xticks(range(len(storm)), labels, fontsize=7)
        ax.set_ylabel("seconds until all subscribed")
        ax.set_title(f"(l) Connect storm, {storm[0]['conns']:,} clients at once")
        save(fig, "connect_storm.png")
