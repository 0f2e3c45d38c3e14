"""``python -m bench.peers NAME --port PORT``: run one peer server until stdin closes."""

from __future__ import annotations

import argparse
import importlib

from . import PEERS


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers")
    parser.add_argument("peer", choices=PEERS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--broker", default="memory://", help="tidings only: memory:// or redis://")
    args = parser.parse_args()
    if not args.host.startswith("127.") and args.host != "::1":
        parser.error("peers listen on loopback only")
    module = importlib.import_module(f"bench.peers.{args.peer}_peer")
    if args.peer == "tidings":
        module.run(args.host, args.port, args.broker)
    elif args.broker != "memory://":
        parser.error("only tidings has a broker other than memory://")
    else:
        module.run(args.host, args.port)


if __name__ == "__main__":
    main()
