"""Run every ``benchmarks/bench_*.py`` (or those named on the command line) and print one table.

Each module exposes ``run() -> list[Measurement]``. Results are also written to
``reports/benchmarks/<module>.json`` so they can be compared across machines.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

from advreid.io import write_json
from advreid.settings import apply_environment

from .common import Measurement


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmark modules to run (default: all), e.g. bench_ingest")
    args = parser.parse_args(argv)
    root = apply_environment(Path(__file__).resolve().parents[1])
    here = Path(__file__).parent
    names = args.names or sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    rows: list[tuple[str, Measurement]] = []
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results = module.run()
        write_json(root / "reports" / "benchmarks" / f"{name}.json", [m.as_dict() for m in results])
        rows += [(name, m) for m in results]
    width = max((len(m.name) for _, m in rows), default=10)
    print(f"\n{'benchmark':<18} {'measurement':<{width}} {'value':>12}  unit        note")
    for module, m in rows:
        print(f"{module:<18} {m.name:<{width}} {m.value:>12.4g}  {m.unit:<11} {m.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
