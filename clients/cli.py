"""``vabroker``: the command line.

Each sub-command is registered in ``COMMANDS`` with a function that adds its arguments and one
that runs it; heavy imports happen inside the runner, so ``vabroker token`` starts quickly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8080)")
    p.add_argument("--config", type=Path, help="TOML configuration file")
    p.add_argument("--store", help="state store URL: memory:// (default) or redis://host:port/db")
    p.add_argument(
        "--demo",
        action="store_true",
        default=None,
        help="add a demo sign-in to the browser pages (mints tokens for demo users)",
    )


def _serve(args: argparse.Namespace) -> int:
    from signaling.config import ConfigError, load_settings
    from signaling.logs import setup_logging
    from signaling.server import serve

    overrides = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "store_url": args.store,
            "demo": args.demo,
        }.items()
        if v is not None
    }
    try:
        settings = load_settings(args.config, **overrides)
    except ConfigError as exc:
        print(f"vabroker: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_json)
    asyncio.run(serve(settings))
    return 0


def _token_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--role", required=True, choices=["recipient", "volunteer", "agent", "admin"])
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


Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]

COMMANDS: dict[str, Command] = {
    "serve": ("run the broker", _serve_args, _serve),
    "token": ("mint a development token with the configured secret", _token_args, _token),
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
