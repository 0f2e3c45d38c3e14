"""``python -m bench``: run the benchmark, show progress, write results, tables and plots."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import os
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from . import report
from .orchestrator import GeneratorPool
from .scenarios import CHANNEL, CHAT, CHAT_CHANNEL, SCALES, Runner, Scale

SCENARIOS = "abcdefghijkl"
DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Tidings against other Python real-time designs, on loopback.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="about 2 minutes, smaller sizes")
    size.add_argument("--smoke", action="store_true", help="every scenario at toy scale (<1 min)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument(
        "--peers",
        default=",".join(report.PEERS),
        help="comma-separated: tidings,fastapi,socketio,bare",
    )
    parser.add_argument(
        "--scenarios",
        "--only",
        default=SCENARIOS,
        help=f"letters of the scenarios to run, e.g. --only hijkl (default {SCENARIOS})",
    )
    parser.add_argument("--processes", type=int, help="load generator processes")
    parser.add_argument(
        "--redis-query",
        default="",
        help="query appended to Tidings' redis:// broker URL, e.g. max_connections=1000",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin CPUs")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scale = SCALES["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.processes:
        scale = dataclasses.replace(scale, processes=args.processes)
    peers = [p for p in args.peers.split(",") if p]
    for p in peers:
        if p not in report.PEERS:
            sys.exit(f"unknown peer {p!r}")
    command = shlex.join([_shown_python(), "-m", "bench", *(argv or sys.argv[1:])])
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(run(args, scale, peers, command))
    except KeyboardInterrupt:
        return 130


def _shown_python() -> str:
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        return str(exe.relative_to(Path.cwd()))
    return str(exe)


def plan(
    runner: Runner, scale: Scale, peers: list[str], scenarios: str, profile: bool
) -> list[Callable[[], Awaitable[Any]]]:
    jobs: list[Callable[[], Awaitable[Any]]] = []

    def add(fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> None:
        jobs.append(lambda: fn(*args, **kwargs))

    configs = (*scale.pubsub_subs, CHAT)
    if "a" in scenarios:
        for subs in scale.fanout_subs:
            for p in peers:
                add(runner.fanout, p, subs)
        for subs in scale.fanout_client_subs:
            for p in peers:
                add(runner.fanout_client, p, subs)
    if "b" in scenarios:
        for rate in scale.latency_rates:
            for p in peers:
                add(runner.latency, p, rate)
    if "c" in scenarios:
        for p in peers:
            add(runner.channels, p)
    if "d" in scenarios:
        for deflate in (False, True):
            for p in peers:
                add(runner.memory, p, deflate)
    if "e" in scenarios:
        for size in scale.slow_sizes:
            for p in peers:
                add(runner.slow, p, size, False)
                add(runner.slow, p, size, True)
    if "f" in scenarios:
        for p in peers:
            add(runner.storm, p, CHANNEL)
        if "tidings" in peers:
            add(runner.storm, "tidings", CHAT_CHANNEL, scale.chat_storm_conns)
    if "g" in scenarios and "tidings" in peers:
        add(runner.recovery, "tidings")
    if "h" in scenarios:
        for p in peers:
            add(runner.roundtrip, p)
    if "i" in scenarios:
        for config in configs:
            for p in peers:
                add(runner.pubsub, p, config)
    if "j" in scenarios:
        for clients in scale.api_clients:
            for p in peers:
                add(runner.api, p, clients)
    if "k" in scenarios and "tidings" in peers:
        # Tidings on Redis, against Tidings on memory in the same run.
        subs = scale.redis_fanout_subs
        if "a" not in scenarios or subs not in scale.fanout_subs:
            add(runner.fanout, "tidings", subs)
        if "a" not in scenarios or subs not in scale.fanout_client_subs:
            add(runner.fanout_client, "tidings", subs)
        if "h" not in scenarios:
            add(runner.roundtrip, "tidings")
        if "i" not in scenarios:
            for config in configs:
                add(runner.pubsub, "tidings", config)
        for nodes in scale.redis_nodes:
            add(runner.fanout, "tidings", subs, broker="redis", nodes=nodes)
            add(runner.fanout_client, "tidings", subs, broker="redis", nodes=nodes)
            add(runner.roundtrip, "tidings", broker="redis", nodes=nodes)
            for config in configs:
                add(runner.pubsub, "tidings", config, broker="redis", nodes=nodes)
    if "l" in scenarios:
        for p in peers:
            add(runner.connect_storm, p)
        if "tidings" in peers:
            add(runner.connect_storm, "tidings", broker="redis")
    if profile and "tidings" in peers:
        subs = min(1000, max(scale.fanout_subs))
        add(runner.fanout, "tidings", subs, runner.log_dir / f"profile-tidings-{subs}.txt")
    return jobs


def _line(entry: dict[str, Any]) -> str:
    """One line per finished run for the console."""
    head = f"{entry['peer']:<8} {entry['scenario']:<8}"
    keys = ("subs", "config", "channels", "conns", "size", "deflate", "with_slow", "channel")
    params = " ".join(f"{k}={entry[k]}" for k in (*keys, "clients") if k in entry)
    if entry.get("broker", "memory") != "memory" or entry.get("nodes", 1) != 1:
        params += f" broker={entry.get('broker')} nodes={entry.get('nodes')}"
    if "error" in entry:
        return f"{head} {params}: [red]error[/red] {entry['error']}"
    s = entry["scenario"]
    if s in ("fanout", "fanout_client", "channels", "profile"):
        lost = entry.get("lost", 0)
        tail = f"{entry['rate']:,.0f} msg/s" + (f", [red]lost {lost:,}[/red]" if lost else "")
    elif s == "latency":
        lat = entry["latency"]
        tail = f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.1f} ms"
    elif s == "memory":
        tail = f"{entry['bytes_per_connection'] / 1024:.1f} KiB/connection"
    elif s == "slow":
        tail = f"others {entry['rate']:,.0f} msg/s, RSS +{entry['rss_growth'] / (1 << 20):.1f} MiB"
        if entry.get("stalled"):
            tail += ", [red]stalled[/red]"
        for slow in entry.get("slow", []):
            tail += f", slow client close code {slow.get('close_code')}"
    elif s == "storm":
        tail = f"{entry['rate']:,.0f} connects/s"
    elif s == "roundtrip":
        tail = ", ".join(
            f"{mode.replace('_', '-')} p50 {entry[mode]['p50_ms']:.2f} ms "
            f"p99 {entry[mode]['p99_ms']:.2f} ms"
            for mode in ("back_to_back", "paced")
        )
    elif s == "pubsub":
        best = entry["sustainable"]
        tail = (
            f"{best['publications_per_second']:,.0f} publications/s "
            f"({best['deliveries_per_second']:,.0f} deliveries/s), p99 {best['p99_ms']:.1f} ms"
            if best
            else "[red]no rate passed[/red]"
        )
        tail += f" ({len(entry['steps'])} steps" + ("" if entry["limit_found"] else ", no limit")
        tail += ")" + (f", [red]lost {entry['lost']:,}[/red]" if entry["lost"] else "")
    elif s == "api":
        tail = (
            f"{entry['rate']:,.0f} publications/s, request p50 {entry['request']['p50_ms']:.1f} "
            f"ms p99 {entry['request']['p99_ms']:.1f} ms"
        )
        if entry["lost"] or entry["http_errors"]:
            tail += f", [red]lost {entry['lost']:,}, errors {entry['http_errors']}[/red]"
    elif s == "connect_storm":
        until = entry["seconds_all"]
        tail = f"{entry['connected']:,} subscribed in " + (f"{until:.2f} s" if until else "-")
        tail += f", {entry['refused']:,} refused" + (
            f" {entry['connect_errors']}" if entry["refused"] else ""
        )
    elif s == "recovery":
        tail = (
            f"{entry['reconnected']:,} back in {entry['seconds']:.2f} s, "
            f"{entry['recovered_messages']:,}/{entry['expected_messages']:,} recovered"
        )
    else:
        tail = ""
    return f"{head} {params}: {tail}"


async def run(args: argparse.Namespace, scale: Scale, peers: list[str], command: str) -> int:
    console = Console()
    out: Path = args.out
    cpus = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cpus) >= 2
    server_cpus = {cpus[0]} if pin else None
    client_cpus = set(cpus[1:]) if pin else None
    started = time.monotonic()
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    pool = GeneratorPool(scale.processes)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
        for proc in pool.procs:
            os.sched_setaffinity(proc.pid, client_cpus)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=4,
    )
    task = progress.add_task("starting", total=1)

    def on_step(text: str) -> None:
        progress.update(task, description=text)

    def on_done() -> None:
        progress.advance(task)
        console.print(_line(runner.results[-1]), highlight=False)

    runner = Runner(scale, pool, out, on_step, on_done)
    runner.server_cpus = server_cpus
    runner.redis_query = args.redis_query
    jobs = plan(runner, scale, peers, args.scenarios, not args.no_profile)
    progress.update(task, total=len(jobs))
    console.print(
        f"[bold]Tidings benchmark[/bold] ({scale.name}): {len(jobs)} measurements, "
        f"peers {', '.join(peers)}; writing to {out}"
    )
    try:
        with progress:
            for job in jobs:
                await job()
    finally:
        pool.close()
    runs = [r for r in runner.results if r["scenario"] != "profile"]
    profile_runs = [r for r in runner.results if r["scenario"] == "profile"]
    results: dict[str, Any] = {
        "meta": {
            "command": command,
            "started": started_at,
            "seconds": time.monotonic() - started,
            "scale": dataclasses.asdict(scale),
            "peers": peers,
            "machine": report.machine(),
            "versions": report.versions(),
            "processes": scale.processes,
            "server_cpus": sorted(server_cpus) if server_cpus else None,
            "client_cpus": sorted(client_cpus) if client_cpus else None,
        },
        "runs": runs,
    }
    if profile_runs and "error" not in profile_runs[0]:
        subs = profile_runs[0]["subs"]
        path = out / f"profile-tidings-{subs}.txt"
        results["profile"] = {
            "subs": subs,
            "rate": 200,
            "file": path.name,
            "run": profile_runs[0],
            **report.analyse_profile(path),
        }
    results["summary"] = report.summarize(runs)
    (out / "results.json").write_bytes(
        orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    )
    (out / "results.md").write_text(report.markdown(results))
    if not args.no_plots:
        report.plots(results, out)
    failed = [r for r in runner.results if "error" in r]
    console.print(
        f"Done in {time.monotonic() - started:.0f} s: {out / 'results.md'}"
        + (f" ([red]{len(failed)} failed[/red])" if failed else "")
    )
    return 1 if failed else 0
