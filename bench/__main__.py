"""Runs every benchmark in bench/ one after another: `python -m bench [--quick] [NAME ...]`."""

from __future__ import annotations

import argparse
import pkgutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    return sorted(
        info.name for info in pkgutil.iter_modules([str(HERE)]) if not info.name.startswith("_")
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default: all of {available()})"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller runs that finish in about a minute each"
    )
    args = parser.parse_args()
    names = args.names or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        parser.error(f"no benchmark named {', '.join(unknown)}; there are {', '.join(available())}")
    failed = []
    for name in names:
        print(f"\n=== bench.{name} ===", flush=True)
        started = time.monotonic()
        argv = [sys.executable, "-m", f"bench.{name}"] + (["--quick"] if args.quick else [])
        result = subprocess.run(argv, cwd=HERE.parent)
        print(
            f"=== bench.{name}: {time.monotonic() - started:.1f}s, exit {result.returncode}",
            flush=True,
        )
        if result.returncode:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
