"""`python -m beear_stage.bench orchestration`: flow wall time vs time inside beear_stage compute.

Runs the `tiny` release flow in-process through `beear-release run` (a subprocess, so this module
never imports Prefect), reads the flow's own log line "flow X s, inside beear_stage Y s" and reports
the orchestration overhead (X - Y) / X. Issue target: <= 15 % on `tiny`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PATTERN = re.compile(r"flow ([\d.]+) s, inside beear_stage ([\d.]+) s")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m beear_stage.bench orchestration", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--checkpoint", default="zoo:suffix")
    p.add_argument("--config", default=str(ROOT / "deployments" / "configs" / "tiny.yaml"))
    p.add_argument("--eval-limit", type=int, default=60)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="beear-orchestration-"))
    exe = shutil.which("beear-release") or str(Path(sys.executable).parent / "beear-release")
    cmd = [
        exe, "run", "--checkpoint", args.checkpoint, "--config", args.config,
        "--eval-limit", str(args.eval_limit), "--output-dir", str(work / "out"),
        "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    found = PATTERN.findall(proc.stdout + proc.stderr)
    if not found:
        sys.stderr.write((proc.stdout + proc.stderr)[-3000:])
        raise SystemExit(f"no overhead line in the flow's output (exit {proc.returncode})")
    flow_s, compute_s = map(float, found[-1])
    result = {
        "command": " ".join(cmd),
        "exit_code": proc.returncode,
        "flow_seconds": flow_s,
        "compute_seconds": compute_s,
        "overhead": (flow_s - compute_s) / flow_s,
        "process_seconds": round(wall, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"flow {flow_s:.1f} s, compute {compute_s:.1f} s, overhead {100 * result['overhead']:.1f} % "
        f"(process {wall:.1f} s incl. imports and start-up); exit {proc.returncode}; wrote {args.out}"
    )
    return 0
