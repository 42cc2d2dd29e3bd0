"""``vabroker``: the command line.

Each sub-command is registered in ``COMMANDS`` with a function that adds its arguments and one
that runs it; heavy imports happen inside the runner, so ``vabroker token`` starts quickly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clients.media import MediaOptions


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8080)")
    p.add_argument("--config", type=Path, help="TOML configuration file")
    _store_args(p)
    p.add_argument(
        "--demo",
        action="store_true",
        default=None,
        help="add a demo sign-in to the browser pages (mints tokens for demo users)",
    )


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        help="state store URL: sqlite:///path/file.db, redis://host:port/db or memory:// "
        "(default: the durable store in the data directory)",
    )
    p.add_argument(
        "--data-dir",
        help="where the durable store keeps its file, broker.db "
        "(default $XDG_DATA_HOME/vabroker or ~/.local/share/vabroker)",
    )


def _store_overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = {"store_url": args.store, "data_dir": args.data_dir}
    return {k: v for k, v in values.items() if v is not None}


def _serve(args: argparse.Namespace) -> int:
    from broker.store.sqlite_file import NotABrokerFile, StoreInUse
    from signaling.config import ConfigError, serve_settings
    from signaling.logs import setup_logging
    from signaling.server import serve

    overrides = {
        k: v
        for k, v in {"host": args.host, "port": args.port, "demo": args.demo}.items()
        if v is not None
    }
    try:
        settings = serve_settings(args.config, **overrides, **_store_overrides(args))
    except ConfigError as exc:
        print(f"vabroker: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_json)
    try:
        asyncio.run(serve(settings))
    except (StoreInUse, NotABrokerFile) as exc:
        print(f"vabroker: {exc}", file=sys.stderr)
        return 1
    return 0


# --- the durable store: backup, restore, migrate -------------------------------------------------


def _file_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML configuration file (to find the store)")
    _store_args(p)


def _sqlite_file(args: argparse.Namespace) -> Path:
    """The store file ``vabroker serve`` would open with the same options."""
    from broker.store.sqlite_file import sqlite_path
    from signaling.config import serve_settings

    url = serve_settings(args.config, **_store_overrides(args)).store_url
    if url.split("://", 1)[0].lower() != "sqlite":
        raise ValueError(
            f"the store is {url}: backup and restore copy the embedded store's file "
            "(use Redis's own persistence, RDB or AOF, for a Redis store)"
        )
    return Path(sqlite_path(url)[0])


def _backup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dest", type=Path, help="file to write the copy to")
    p.add_argument("--force", action="store_true", help="replace DEST if it exists")
    _file_args(p)


def _backup(args: argparse.Namespace) -> int:
    import sqlite3

    from broker.store.sqlite_file import NotABrokerFile, backup
    from signaling.config import ConfigError

    try:
        source = _sqlite_file(args)
        if args.dest.exists() and not args.force:
            raise ValueError(f"{args.dest} exists (add --force to replace it)")
        if args.dest.absolute() == source.absolute():
            raise ValueError("the backup cannot be the store's own file")
        backup(source, args.dest)
    except (ConfigError, NotABrokerFile, ValueError, OSError, sqlite3.Error) as exc:
        print(f"vabroker: {exc}", file=sys.stderr)
        return 2
    print(f"backed up {source} to {args.dest}")
    return 0


def _restore_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", type=Path, help="a file written by `vabroker backup`")
    _file_args(p)


def _restore(args: argparse.Namespace) -> int:
    import sqlite3

    from broker.store.sqlite_file import NotABrokerFile, StoreInUse, restore
    from signaling.config import ConfigError

    try:
        target = _sqlite_file(args)
        if args.src.absolute() == target.absolute():
            raise ValueError("the backup is the store's own file")
        restore(args.src, target)
    except (ConfigError, NotABrokerFile, StoreInUse, ValueError, OSError, sqlite3.Error) as exc:
        print(f"vabroker: {exc}", file=sys.stderr)
        return 2
    print(f"restored {target} from {args.src}")
    return 0


def _migrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        help="the store to read: sqlite:///path/file.db, redis://host:port/db or "
        "redis+cluster://host:port",
    )
    p.add_argument("--to", dest="target", required=True, help="the empty store to write")


def _migrate(args: argparse.Namespace) -> int:
    import sqlite3

    import redis.exceptions as rex

    from broker.store.base import MigrationRefused, StoreUnavailable
    from broker.store.migrate import migrate
    from broker.store.sqlite_file import NotABrokerFile, StoreInUse

    try:
        counts = asyncio.run(migrate(args.source, args.target))
    except (
        ValueError,
        MigrationRefused,
        StoreUnavailable,
        StoreInUse,
        NotABrokerFile,
        OSError,
        sqlite3.Error,
        rex.RedisError,
        rex.RedisClusterException,  # a cluster with no reachable node
    ) as exc:
        print(f"vabroker migrate: {exc}", file=sys.stderr)
        return 2
    for kind, n in counts.items():
        print(f"{kind:12} {n}")
    print(f"{'total':12} {sum(counts.values())}")
    return 0


def _token_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--role", required=True, choices=["recipient", "volunteer", "agent", "admin", "assistant"]
    )
    p.add_argument("--sub", required=True, help="user id")
    p.add_argument("--name", help="display name")
    p.add_argument("--org", help="organisation (agents and org admins)")
    p.add_argument("--lang", help="languages, comma-separated BCP 47 tags, e.g. en,fr")
    p.add_argument("--tz", help="IANA time zone, e.g. Europe/London")
    p.add_argument("--ttl", type=float, default=86400.0, help="lifetime in seconds (default 1 day)")
    p.add_argument("--config", type=Path, help="TOML configuration file holding jwt_secret")


def _token(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from signaling.auth import Claims, mint
    from signaling.config import ConfigError, load_settings

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"vabroker: {exc}", file=sys.stderr)
        return 2
    if settings.jwt_secret is None:
        print(
            "vabroker: set VABROKER_JWT_SECRET (the broker's HS256 secret) to mint tokens",
            file=sys.stderr,
        )
        return 2
    languages = [t.strip() for t in args.lang.split(",") if t.strip()] if args.lang else None
    token = mint(
        settings.jwt_secret.get_secret_value(),
        sub=args.sub,
        role=args.role,
        name=args.name,
        org=args.org,
        languages=languages,
        timezone=args.tz,
        ttl_s=args.ttl,
    )
    try:  # the same validation the broker applies, so a bad flag is caught here
        import jwt

        Claims.model_validate(jwt.decode(token, options={"verify_signature": False}))
    except ValidationError as exc:
        err = exc.errors()[0]
        claim = str(err["loc"][0])
        flag = {"locale": "lang", "languages": "lang", "zoneinfo": "tz"}.get(claim, claim)
        print(f"vabroker: --{flag} ({claim} claim): {err['msg']}", file=sys.stderr)
        return 2
    print(token)
    return 0


# --- bots: volunteer, call, demo ---------------------------------------------------------------


def _broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=os.environ.get("VABROKER_URL", "http://127.0.0.1:8080"),
        help="broker URL, http(s):// or ws(s):// (default $VABROKER_URL or http://127.0.0.1:8080)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("VABROKER_TOKEN"),
        help="your token (default $VABROKER_TOKEN); `vabroker token` mints development ones",
    )
    p.add_argument(
        "--loopback",
        action="store_true",
        help="offer only 127.0.0.1 for media (both parties on this machine, no network)",
    )
    p.add_argument(
        "--connect-timeout", type=float, default=10.0, help="seconds to set up media (default 10)"
    )


def _seconds(text: str) -> float:
    """A number of seconds from 0 to 3600, for ``--take-after``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 3600:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds from 0 to 3600")
    return value


def _volunteer_args(p: argparse.ArgumentParser) -> None:
    _broker_args(p)
    p.add_argument("--lang", required=True, help="languages you help in, e.g. en or en,fr")
    p.add_argument("--tz", required=True, help="your IANA time zone, e.g. Europe/London")
    p.add_argument("--auto-accept", action="store_true", help="accept every ring at once")
    p.add_argument(
        "--take-after",
        type=_seconds,
        metavar="S",
        help="watch the lobby and take the oldest request once it has waited S seconds",
    )
    p.add_argument("--record", help="record the call's video and audio to this file (.mp4, .mkv)")


def _call_args(p: argparse.ArgumentParser) -> None:
    _broker_args(p)
    p.add_argument("--lang", help="the language of the call (default your first language)")
    p.add_argument("--topic", help="what you need help with")
    p.add_argument(
        "--circle",
        choices=["first", "only"],
        help="ring your trusted circle first (for a head start), or only",
    )
    p.add_argument(
        "--video",
        help="a video file or camera device (/dev/video0) to send (default a test pattern)",
    )
    p.add_argument(
        "--duration", type=float, default=10.0, help="seconds to stay in the call (default 10)"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--volunteers", type=int, default=3, help="volunteer bots (default 3)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of call (default 5)")


def _bot_setup(args: argparse.Namespace) -> tuple[str, str] | None:
    from clients.sdk import ws_url

    if not args.token:
        print("vabroker: give --token or set VABROKER_TOKEN", file=sys.stderr)
        return None
    try:
        return ws_url(args.url), args.token
    except ValueError as exc:
        print(f"vabroker: --url: {exc}", file=sys.stderr)
        return None


def _media_options(
    args: argparse.Namespace, video: str | None = None, record: str | None = None
) -> MediaOptions:
    from clients.media import MediaOptions

    if args.connect_timeout <= 0:
        raise ValueError("--connect-timeout must be positive")
    return MediaOptions(
        video=video,
        record=record,
        loopback_ice=args.loopback,
        connect_timeout_s=args.connect_timeout,
    )


def _volunteer(args: argparse.Namespace) -> int:
    from rich.console import Console

    from clients.bots import BotError, run_volunteer, update_profile
    from clients.roles import Volunteer
    from clients.sdk import Client

    setup = _bot_setup(args)
    if setup is None:
        return 2
    url, token = setup
    languages = [t.strip() for t in args.lang.split(",") if t.strip()]
    console = Console()

    async def run() -> int:
        party = Volunteer(
            Client(url, token, client_name="vabroker-volunteer/0.1"),
            _media_options(args, record=args.record),
            auto_accept=args.auto_accept,
            take_after_s=args.take_after,
        )
        try:
            await party.client.connect()
            if party.client.welcome and party.client.welcome.user.role != "volunteer":
                raise BotError("this token is not a volunteer's")
            await update_profile(args.url, token, {"languages": languages, "timezone": args.tz})
            ask = not args.auto_accept and args.take_after is None
            await run_volunteer(party, console, ask=ask)
        finally:
            await party.close()
        return 0

    return _run_bot(run)


def _call(args: argparse.Namespace) -> int:
    from rich.console import Console

    from clients.bots import dump, media_table, run_call
    from clients.roles import Recipient
    from clients.sdk import Client

    setup = _bot_setup(args)
    if setup is None:
        return 2
    url, token = setup
    if args.duration <= 0:
        print("vabroker: --duration must be positive", file=sys.stderr)
        return 2
    if args.video and not Path(args.video).exists():
        print(f"vabroker: --video: {args.video} does not exist", file=sys.stderr)
        return 2
    console = Console(stderr=args.json)

    async def run() -> int:
        party = Recipient(
            Client(url, token, client_name="vabroker-call/0.1"),
            _media_options(args, video=args.video),
        )
        try:
            await party.client.connect()
            report = await run_call(
                party,
                console,
                language=args.lang,
                topic=args.topic,
                duration_s=args.duration,
                circle=args.circle,
            )
        finally:
            await party.close()
        if args.json:
            print(dump(report))
        else:
            console.print(f"outcome: {report.outcome}, waited {report.waited_s:.1f} s")
            if report.media:
                console.print(media_table("media", report.media))
        return 0 if report.outcome == "completed" else 1

    return _run_bot(run)


def _assistant_args(p: argparse.ArgumentParser) -> None:
    _broker_args(p)
    p.add_argument("--lang", default="en", help="languages it reads: en, es, ar (default en)")
    p.add_argument("--tz", default="UTC", help="its IANA time zone (default UTC)")


def _assistant(args: argparse.Namespace) -> int:
    from clients.assistant import LANGUAGES, Assistant
    from clients.bots import BotError, update_profile
    from clients.sdk import Client

    setup = _bot_setup(args)
    if setup is None:
        return 2
    url, token = setup
    languages = [t.strip() for t in args.lang.split(",") if t.strip()]
    unknown = [t for t in languages if t.split("-")[0].lower() not in LANGUAGES]
    if not languages or unknown:
        print(
            f"vabroker: --lang: reads {', '.join(LANGUAGES)}; not {', '.join(unknown) or 'none'}",
            file=sys.stderr,
        )
        return 2

    async def run() -> int:
        party = Assistant(
            Client(url, token, client_name="vabroker-assistant/0.1"), _media_options(args)
        )
        try:
            await party.client.connect()
            if party.client.welcome and party.client.welcome.user.role != "assistant":
                raise BotError("this token is not an assistant's (vabroker token --role assistant)")
            # An automatic helper answers at any hour and as often as it is asked.
            changes = {
                "languages": languages,
                "timezone": args.tz,
                "ring_window": {"start": "00:00", "end": "00:00"},
                "daily_ring_cap": 1000,
            }
            await update_profile(args.url, token, changes)
            await party.set_available(True)
            print(f"on duty: reading {', '.join(languages)}", file=sys.stderr)
            lost = await party.client.wait_closed()
            if lost is not None:
                print(f"vabroker: {lost}", file=sys.stderr)
                return 1
        finally:
            await party.close()
        return 0

    return _run_bot(run)


def _demo(args: argparse.Namespace) -> int:
    import logging

    from rich.console import Console

    from clients.bots import run_demo

    if not 1 <= args.volunteers <= 50:
        print("vabroker: --volunteers must be between 1 and 50", file=sys.stderr)
        return 2
    if args.duration <= 0:
        print("vabroker: --duration must be positive", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    return _run_bot(lambda: run_demo(Console(), args.volunteers, args.duration))


def _run_bot(run: Callable[[], Coroutine[Any, Any, int]]) -> int:
    from clients.bots import BotError
    from clients.sdk import SdkError

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 130
    except (BotError, SdkError, ValueError) as exc:
        print(f"vabroker: {exc}", file=sys.stderr)
        return 1


def _simulate_args(p: argparse.ArgumentParser) -> None:
    from clients.simulate import add_args

    add_args(p)


def _simulate(args: argparse.Namespace) -> int:
    from clients.simulate import run

    return run(args)


Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]

COMMANDS: dict[str, Command] = {
    "serve": ("run the broker", _serve_args, _serve),
    "backup": (
        "copy the durable store's file (safe while the broker runs)",
        _backup_args,
        _backup,
    ),
    "restore": ("replace the durable store's file with a backup", _restore_args, _restore),
    "migrate": (
        "copy every record from one durable store into an empty one (sqlite, redis)",
        _migrate_args,
        _migrate,
    ),
    "token": ("mint a development token with the configured secret", _token_args, _token),
    "volunteer": ("go on duty as a volunteer bot and answer calls", _volunteer_args, _volunteer),
    "call": ("ask for help as a recipient and show the call", _call_args, _call),
    "assistant": (
        "go on duty as the automatic reader: reads the text in the caller's video aloud",
        _assistant_args,
        _assistant,
    ),
    "demo": ("run a broker, volunteer bots and a recipient: one whole call", _demo_args, _demo),
    "simulate": ("compare dispatch policies on a simulated population", _simulate_args, _simulate),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vabroker", description="Live video-assistance connection broker"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost,::1")
    return COMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
