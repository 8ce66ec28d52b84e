"""`python -m chat_service [serve]` runs the service; `... token` prints a dev token.

`serve --workers N` (or WORKERS=N; the option wins) runs N processes on one
port, which needs REDIS_URL (chat_service/workers.py); the default is one.

Exit codes: 0 after a drain; 2 when a setting is malformed or missing
("configuration error: ...", naming the variable); 69 (EX_UNAVAILABLE) when
something the service needs cannot be reached at start ("cannot start:
<what>; check <variable>"): the same start may work once it is back.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys

from chat_service.config import MAX_WORKERS, ConfigError, Settings

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 69  # sysexits.h EX_UNAVAILABLE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chat_service", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="serve gRPC (the default)")
    serve.add_argument(
        "--workers",
        type=_workers,
        help=f"processes serving the port, 1 to {MAX_WORKERS} (default: WORKERS, else 1); "
        "more than one needs REDIS_URL",
    )
    # Given by the supervisor to the workers it starts (chat_service/workers.py).
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--lifeline-fd", type=int, help=argparse.SUPPRESS)
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
    if getattr(args, "workers", None) is not None:
        settings = dataclasses.replace(settings, workers=args.workers)
    worker_index = getattr(args, "worker_index", None)
    if worker_index is not None:
        settings = dataclasses.replace(settings, worker_index=worker_index)
        return _serve(settings, lifeline_fd=args.lifeline_fd)
    from chat_service import workers

    try:
        workers.check(settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if settings.workers > 1:
        return _supervise(settings)
    return _serve(settings)


def _supervise(settings: Settings) -> int:
    from chat_service.logs import configure_logging
    from chat_service.workers import PortTaken, supervise

    configure_logging(settings.log_level, settings.log_format, settings.service_name)
    try:
        return supervise(settings, os.environ)
    except PortTaken as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def _serve(settings: Settings, *, lifeline_fd: int | None = None) -> int:
    from chat_service import bench_counters
    from chat_service.grpc_api.server import StartupFailed, serve
    from chat_service.logs import configure_logging
    from chat_service.workers import serve_as_worker

    configure_logging(
        settings.log_level,
        settings.log_format,
        settings.service_name,
        worker=settings.worker_index,
    )
    # Off unless CHAT_BENCH_COUNTERS is set (the bench sets it): see bench_counters.py.
    bench_counters.install_from_env(os.environ)
    try:
        if lifeline_fd is None:
            asyncio.run(serve(settings))
        else:
            asyncio.run(serve_as_worker(settings, lifeline_fd))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (StartupFailed, OSError) as exc:  # OSError: DATA_DIR's files
        print(f"cannot start: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return 0


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text[:40]!r}") from None
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be in 1..{MAX_WORKERS}, got {value}")
    return value


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
