"""Keep third_party/googleapis equal to the protos the googleapis-common-protos wheel ships.

buf cannot fetch googleapis from the BSR offline, so our imports resolve
against copies of the wheel's files. `--write` refreshes them, `--check`
fails when they differ from the installed wheel.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# googleapis-common-protos has no py.typed marker.
import google.api  # type: ignore[import-untyped]
import google.rpc  # type: ignore[import-untyped]

FILES = {
    "google/api/annotations.proto": google.api,
    "google/api/http.proto": google.api,
    "google/api/httpbody.proto": google.api,
    "google/rpc/status.proto": google.rpc,
    "google/rpc/error_details.proto": google.rpc,
}
DEST = Path(__file__).resolve().parent.parent / "third_party" / "googleapis"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = []
    for rel, package in FILES.items():
        source = Path(next(iter(package.__path__))) / Path(rel).name
        target = DEST / rel
        wanted = source.read_bytes()
        if target.exists() and target.read_bytes() == wanted:
            continue
        if args.write:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(wanted)
        else:
            stale.append(rel)
    if stale:
        print(f"third_party/googleapis differs from the wheel: {stale}; run 'make generate'")
        return 1
    print("third_party/googleapis matches the installed googleapis-common-protos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
