"""Dispatch `python -m beear_stage.bench <name>` to `beear_stage.bench.<name>.main`."""

from __future__ import annotations

import importlib
import sys

from beear_stage.bench import BENCHMARKS


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        lines = [f"  {name:<14} {doc}" for name, doc in BENCHMARKS.items()]
        print("usage: python -m beear_stage.bench <name> [options]\n\nbenchmarks:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown benchmark {argv[0]!r}; choose one of {sorted(BENCHMARKS)}")
            return 2
        return 0
    module = importlib.import_module(f"beear_stage.bench.{argv[0]}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
