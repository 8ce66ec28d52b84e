"""Build what the Envoy edge (deploy/envoy/) needs: the descriptor set and the config.

    python tools/render_envoy.py descriptor build/chat_service.pb
    python tools/render_envoy.py config --descriptor build/chat_service.pb \\
        --listen 0.0.0.0:8080 --admin-port 9901 --service 127.0.0.1:8001 -o envoy.yaml

`descriptor` compiles the contract (proto/chatbot/chat/v1/chat_service.proto
with every import, and google/rpc/error_details.proto so that Envoy can print
the ErrorInfo and BadRequest details of an error as JSON) into a
FileDescriptorSet for the gRPC-JSON transcoder. It uses the protoc of
grpcio-tools, so it needs only the virtualenv. `config` fills in the
placeholders of deploy/envoy/envoy.yaml, the one template. `make run-edge`
and the tests (tests/support/envoy.py) both go through here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "envoy" / "envoy.yaml"
DEFAULT_DESCRIPTOR = ROOT / "build" / "chat_service.pb"

# Relative to the include roots below.
CONTRACT = "chatbot/chat/v1/chat_service.proto"
ERROR_DETAILS = "google/rpc/error_details.proto"
INCLUDE_ROOTS = (ROOT / "proto", ROOT / "third_party" / "googleapis")


class EdgeConfigError(ValueError):
    """A value the config cannot take (a bad port or address)."""


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, what: str) -> HostPort:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise EdgeConfigError(f"{what}: expected HOST:PORT, got {text!r}")
        return cls(_host(host, what), _port(port, what))


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    """Where the edge listens, where its admin interface is (loopback only),
    which gRPC server it forwards to, and the descriptor set it transcodes with."""

    listen: HostPort
    admin_port: int
    service: HostPort
    descriptor: Path


def build_descriptor(out: Path) -> Path:
    """Compile the contract's descriptor set (with its imports) into `out`."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written next to `out`, then renamed: whoever reads `out` (a running
    # test, Envoy) never sees half a file.
    fd, partial = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
    os.close(fd)
    try:
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",  # adds the well-known types' include root itself
            *(f"--proto_path={root}" for root in INCLUDE_ROOTS),
            "--include_imports",
            f"--descriptor_set_out={partial}",
            CONTRACT,
            ERROR_DETAILS,
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"protoc failed ({done.returncode}):\n{done.stderr}")
        os.chmod(partial, 0o644)  # mkstemp's 0600 would hide it from an Envoy of another user
        os.replace(partial, out)
    finally:
        Path(partial).unlink(missing_ok=True)
    return out


def render_config(settings: EdgeSettings, template: Path = TEMPLATE) -> str:
    """The template with every placeholder filled in (KeyError if one is unknown)."""
    values: Mapping[str, str] = {
        # Strings go in as JSON strings, which YAML reads as they are: a path
        # with ": " or "#" in it stays one scalar.
        "LISTEN_ADDRESS": json.dumps(settings.listen.host),
        "LISTEN_PORT": str(settings.listen.port),
        "ADMIN_PORT": str(_port(str(settings.admin_port), "admin port")),
        "SERVICE_ADDRESS": json.dumps(settings.service.host),
        "SERVICE_PORT": str(settings.service.port),
        "DESCRIPTOR": json.dumps(str(settings.descriptor.resolve())),
    }
    return Template(template.read_text()).substitute(values)


def write_config(settings: EdgeSettings, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_config(settings))
    return out


def _host(text: str, what: str) -> str:
    host = text.strip("[]")  # [::1]:8080
    if not host or any(c.isspace() or c in "\"'{}[],#" for c in host):
        raise EdgeConfigError(f"{what}: not a host name or address: {text!r}")
    return host


def _port(text: str, what: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise EdgeConfigError(f"{what}: expected a port from 1 to 65535, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    descriptor = commands.add_parser("descriptor", help="build the descriptor set")
    descriptor.add_argument("out", type=Path, nargs="?", default=DEFAULT_DESCRIPTOR)
    config = commands.add_parser("config", help="render deploy/envoy/envoy.yaml")
    config.add_argument("--listen", default="0.0.0.0:8080", help="HOST:PORT the edge serves on")
    config.add_argument("--admin-port", default="9901", help="Envoy's admin port on 127.0.0.1")
    config.add_argument("--service", default="127.0.0.1:8001", help="the gRPC server, HOST:PORT")
    config.add_argument("--descriptor", type=Path, default=DEFAULT_DESCRIPTOR)
    config.add_argument("-o", "--out", type=Path, help="the file to write (default: stdout)")
    args = parser.parse_args(argv)
    try:
        if args.command == "descriptor":
            print(build_descriptor(args.out))
            return 0
        settings = EdgeSettings(
            listen=HostPort.parse(args.listen, "--listen"),
            admin_port=_port(args.admin_port, "--admin-port"),
            service=HostPort.parse(args.service, "--service"),
            descriptor=args.descriptor,
        )
        if not settings.descriptor.is_file():
            raise EdgeConfigError(
                f"no descriptor set at {settings.descriptor}: run "
                "'make build/chat_service.pb' (or this tool's descriptor command)"
            )
    except (EdgeConfigError, RuntimeError) as error:
        print(f"render_envoy: {error}", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.write(render_config(settings))
    else:
        write_config(settings, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
