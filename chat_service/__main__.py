"""`python -m chat_service [serve]` runs the service; `... token` prints a dev token.

Exit codes: 0 after a drain; 2 when a setting is malformed or missing
("configuration error: ...", naming the variable); 69 (EX_UNAVAILABLE) when
something the service needs cannot be reached at start ("cannot start:
<what>; check <variable>"): the same start may work once it is back.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from chat_service.config import ConfigError, Settings

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 69  # sysexits.h EX_UNAVAILABLE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chat_service", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve gRPC (the default)")
    token = commands.add_parser(
        "token", help="print a JWT signed with the development key the server uses"
    )
    token.add_argument("--tenant", required=True, help="the tenant_id claim")
    token.add_argument("--user", default="dev", help="the sub claim (default: dev)")
    token.add_argument(
        "--scope",
        action="append",
        dest="scopes",
        help="a scope to grant; repeat for several (default: chat:read chat:write chat:admin)",
    )
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "token":
        return _print_token(settings, args.tenant, args.user, args.scopes, args.ttl)
    return _serve(settings)


def _serve(settings: Settings) -> int:
    from chat_service import bench_counters
    from chat_service.grpc_api.server import StartupFailed, serve
    from chat_service.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format, settings.service_name)
    # Off unless CHAT_BENCH_COUNTERS is set (the bench sets it): see bench_counters.py.
    bench_counters.install_from_env(os.environ)
    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (StartupFailed, OSError) as exc:  # OSError: DATA_DIR's files
        print(f"cannot start: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return 0


def _print_token(
    settings: Settings, tenant: str, user: str, scopes: list[str] | None, ttl: int
) -> int:
    from chat_service.auth import DEV_SCOPES, TENANT_ID_PATTERN, load_or_create_dev_key
    from chat_service.config import DEV_KEY_REFUSED

    if not TENANT_ID_PATTERN.fullmatch(tenant):
        # The server refuses such a token (TENANT_CLAIM_INVALID): say so now.
        print(
            "--tenant must be 1 to 128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if settings.jwt.configured:
        print(
            "a JWT key is configured: tokens come from your identity provider, not this command",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if not settings.dev_jwt_key_allowed:
        # The server would refuse to start on this key: its tokens are useless.
        print(f"configuration error: {DEV_KEY_REFUSED}", file=sys.stderr)
        return EXIT_CONFIG
    key = load_or_create_dev_key(settings.data_dir)
    print(key.mint(tenant, user, scopes or DEV_SCOPES, ttl_seconds=ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
