"""Run benchmarks: `python -m bench` runs them all, `python -m bench NAME [args]` one of them.

A benchmark is a module `bench/NAME.py` with `async def run(argv: list[str]) -> None` that
prints its figures. Figures are ratios against a baseline measured in the same run, because
these machines are noisy.
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(
        info.name for info in pkgutil.iter_modules([str(here)]) if not info.name.startswith("_")
    )


def main(argv: list[str]) -> int:
    names = available()
    if argv and argv[0] in ("-h", "--help"):
        print("usage: python -m bench [NAME [ARGS...]]\nbenchmarks: " + ", ".join(names))
        return 0
    selected = [argv[0]] if argv else names
    args = argv[1:]
    for name in selected:
        if name not in names:
            print(f"no benchmark named {name!r}; have: {', '.join(names)}", file=sys.stderr)
            return 2
        module = importlib.import_module(f"bench.{name}")
        print(f"== {name}")
        asyncio.run(module.run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
