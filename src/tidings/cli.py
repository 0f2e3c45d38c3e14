"""The ``tidings`` command: run a node, mint tokens, publish and listen.

Every command reads settings as the server does (``TIDINGS_*`` env vars and
``--config FILE``), so ``token``, ``publish`` and ``listen`` find the keys that
``serve`` generated into the data dir.
"""

from __future__ import annotations

import asyncio
import logging.config
import signal
import socket
from types import FrameType
from typing import Annotated, Any

import httpx
import orjson
import typer
from websockets.exceptions import WebSocketException

from .auth import make_connection_token
from .cli_accounts import db_app, user_app
from .cli_shared import ConfigOption, fail, load_settings
from .client import ClientError, open_client
from .config import KEY_FILES, Settings
from .logs import log_config
from .server import TidingsServer, build_server

app = typer.Typer(
    name="tidings",
    help="Tidings: a real-time messaging server that speaks the Centrifugo protocol.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _stored_key(settings: Settings, field: str) -> str | None:
    """A key from the settings or, as serve would find it, from the data dir; never generated."""
    value: str | None = getattr(settings, field)
    if value:
        return value
    path = settings.data_dir / KEY_FILES[field]
    if path.is_file():
        return path.read_text().strip() or None
    return None


def _parse_json(value: str, param: str) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as e:
        raise typer.BadParameter(f"not valid JSON ({e})", param_hint=param) from None


# --- serve ----------------------------------------------------------------


class _CliServer(TidingsServer):
    """Says where it listens once it accepts connections (the real port for ``--port 0``)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if sock.family == socket.AF_INET6 else host
                typer.echo(f"Tidings listening on http://{shown}:{port}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port).")] = 8000,
    config: ConfigOption = None,
) -> None:
    """Run a Tidings node. SIGTERM or Ctrl+C shut it down gracefully."""
    settings = load_settings(config)
    logging.config.dictConfig(log_config(settings.log_level, settings.log_format))
    missing = [field for field in KEY_FILES if not getattr(settings, field)]
    fresh = {f for f in missing if not (settings.data_dir / KEY_FILES[f]).exists()}
    try:
        settings = settings.with_generated_keys()
    except OSError as e:
        fail(f"cannot store generated keys in {settings.data_dir}: {e}")
    for field in missing:
        path = (settings.data_dir / KEY_FILES[field]).resolve()
        env = f"TIDINGS_{field.upper()}"
        if field in fresh:
            typer.echo(f"Generated a new {field}, stored in {path} (set {env} to choose one)")
        else:
            typer.echo(f"Using the {field} stored in {path}")

    server = build_server(settings, host=host, port=port, server_class=_CliServer)

    def stop(signum: int, frame: FrameType | None) -> None:
        # Until uvicorn installs its own handlers, and again when it re-raises the
        # signal after its graceful shutdown: ask for (or confirm) a clean exit.
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    server.run()  # exits with status 3 itself if it cannot start (the port is taken, say)


# --- token ----------------------------------------------------------------


@app.command()
def token(
    user: Annotated[
        str, typer.Argument(metavar="USER", help="The user the token is for (its sub claim).")
    ],
    ttl: Annotated[
        int, typer.Option(min=0, help="Seconds until the token expires (0: never).")
    ] = 3600,
    info: Annotated[
        str | None, typer.Option(help="JSON shown to others as the connection's info.")
    ] = None,
    channels: Annotated[
        str | None, typer.Option(help="Comma-separated channels to subscribe the client to.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Print a connection token (JWT) signed with the server's secret."""
    info_value = _parse_json(info, "--info") if info is not None else None
    channel_list = [c.strip() for c in (channels or "").split(",") if c.strip()]
    secret = _stored_key(load_settings(config), "secret")
    if secret is None:
        fail("no secret: set TIDINGS_SECRET, or run `tidings serve` once to generate one")
    typer.echo(
        make_connection_token(
            secret, user, ttl=ttl or None, info=info_value, channels=channel_list or None
        )
    )


# --- publish --------------------------------------------------------------


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return f"{error.get('message', 'error')} (code {error.get('code')})"
    return f"HTTP {response.status_code} {response.reason_phrase}"


@app.command()
def publish(
    channel: Annotated[str, typer.Argument(metavar="CHANNEL", help="Channel to publish to.")],
    data: Annotated[str, typer.Argument(metavar="JSON", help="The data, as JSON.")],
    url: Annotated[str, typer.Option(help="The server's base URL.")] = "http://127.0.0.1:8000",
    api_key: Annotated[
        str | None, typer.Option(help="Server API key (default: TIDINGS_API_KEY or the data dir).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Publish JSON data to a channel through the server API; prints offset and epoch."""
    value = _parse_json(data, "JSON")
    key = api_key or _stored_key(load_settings(config), "api_key")
    if key is None:
        fail("no API key: pass --api-key or set TIDINGS_API_KEY")
    body = orjson.dumps({"channel": channel, "data": value})
    try:
        response = httpx.post(
            f"{url.rstrip('/')}/api/publish",
            content=body,
            headers={"X-API-Key": key, "Content-Type": "application/json"},
            timeout=30,
        )
    except (httpx.HTTPError, httpx.InvalidURL) as e:
        fail(f"cannot reach {url}: {e}")
    if response.is_error:
        fail(_error_message(response))
    try:
        reply = response.json()
    except ValueError:
        fail(f"not a JSON reply from {url}: HTTP {response.status_code}")
    if not isinstance(reply, dict) or "error" in reply or "result" not in reply:
        fail(_error_message(response))
    typer.echo(orjson.dumps(reply["result"]).decode())


# --- listen ---------------------------------------------------------------


async def _listen(url: str, token: str, channel: str) -> None:
    async with open_client(url, token, name="tidings-cli") as client:
        await client.subscribe(channel)
        typer.echo(f"Subscribed to {channel}; waiting for publications (Ctrl+C to stop)", err=True)
        async for pub in client.publications():
            typer.echo(orjson.dumps(pub.data).decode())


@app.command()
def listen(
    channel: Annotated[str, typer.Argument(metavar="CHANNEL", help="Channel to subscribe to.")],
    url: Annotated[
        str, typer.Option(help="The server's WebSocket endpoint.")
    ] = "ws://127.0.0.1:8000/connection/websocket",
    user: Annotated[str, typer.Option(help="User to mint a token for (without --token).")] = "cli",
    token: Annotated[
        str | None, typer.Option(help="Connection token (default: minted with the secret).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Subscribe to a channel and print each publication's data as a JSON line."""
    if token is None:
        secret = _stored_key(load_settings(config), "secret")
        if secret is None:
            fail("no secret to mint a token with: pass --token or set TIDINGS_SECRET")
        # Used by this process only, which does not refresh tokens: no expiry.
        token = make_connection_token(secret, user, ttl=None)
    try:
        asyncio.run(_listen(url, token, channel))
    except ClientError as e:
        fail(f"{e.message} (code {e.code})")
    except (OSError, TimeoutError, WebSocketException) as e:
        fail(f"cannot connect to {url}: {e}")
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


app.add_typer(user_app, name="user")
app.add_typer(db_app, name="db")


def main() -> None:
    app()
