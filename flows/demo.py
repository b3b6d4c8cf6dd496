"""`make demo` / `beear-release demo`: the `smol` deployment end to end on local services.

Starts (or reuses) the local Prefect server, MLflow server, pool, deployments and worker, runs
`prefect deployment run beear-release/smol --watch` (`--deployment tiny`: the fast smoke run on a
tiny zoo model), then prints every gate with its margin and where to look: the Prefect flow
run, the MLflow run and the registry version. The services keep running for the UIs;
`beear-release down` stops them.

`--watch` prints Prefect's events (task runs starting and ending), not the flow's log. The flow's
log records (model build, evaluation and mitigation progress with counts and an ETA, the gate
verdicts) go to the worker's log, so the demo prints those records as they arrive, marked `log |`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from flows import services
from flows.services import Services

DEPLOYMENT = "beear-release/tiny"
REGISTRY_NAME = "beear-tiny"  # deployments/prefect.yaml, tiny.parameters.registry_name
# `make demo` / `make demo-tiny`: deployment name -> its registry_name in deployments/prefect.yaml
DEMOS = {"smol": "beear-smol", "tiny": "beear-tiny"}
# a first `make demo` builds the real-tier model (minutes on 2 cores) before the release run itself
DEMO_TIMEOUT_S = 3600


def run_deployment(
    s: Services, deployment: str = DEPLOYMENT, *params: str, timeout_s: int = 1800
) -> tuple[int, str]:
    """`prefect deployment run <deployment> --watch`, streamed; returns (exit code, flow run id)."""
    cmd = [str(Path(sys.executable).parent / "prefect"), "deployment", "run", deployment, "--watch"]
    cmd += ["--watch-timeout", str(timeout_s), *[a for p in params for a in ("-p", p)]]
    print("$ " + " ".join(cmd), flush=True)
    tail = LogTail(s.log_file("worker"))
    tail.start()
    proc = subprocess.Popen(
        cmd, cwd=s.root, env=s.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    run_id = ""
    try:
        for line in proc.stdout:
            print(line, end="", flush=True)
            found = re.search(r"UUID:\s*([0-9a-f-]{36})", line)
            run_id = found.group(1) if found and not run_id else run_id
        return proc.wait(), run_id
    finally:
        tail.stop()


# a log record of the flow in the worker's log; tqdm bars share its lines without a newline
_RECORD = re.compile(r"\d\d:\d\d:\d\d\.\d+ \| (?:INFO|WARNING|ERROR|CRITICAL) *\| .*")


class LogTail(threading.Thread):
    """Print the log records appended to `path` (INFO and above) while a run is watched."""

    def __init__(self, path: Path, every_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.path, self.every_s = Path(path), every_s
        self.offset = self.path.stat().st_size if self.path.is_file() else 0
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            self.drain()
            self._stop.wait(self.every_s)
        self.drain()

    def drain(self) -> None:
        if not self.path.is_file():
            return
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1  # whole lines only; the rest is read next time
        self.offset += end
        for line in chunk[:end].decode("utf-8", "replace").splitlines():
            for record in _RECORD.findall(line.replace("\r", "\n")):
                print(f"log | {record}", flush=True)

    def stop(self) -> None:
        self._stop.set()
        self.join(timeout=5)


def gate_table(report: dict) -> str:
    """Every gate of a gate report with its value, interval, threshold and margin (> 0 passes)."""
    lines = ["Gates (decided on 95 % intervals; margin > 0 passes):"]
    for g in report.get("results", []):
        ci = f"[{g['ci_low']:.4f}, {g['ci_high']:.4f}]" if g.get("ci_low") is not None else ""
        value = "n/a" if g.get("value") is None else f"{g['value']:.4f}"
        margin = "n/a" if g.get("margin") is None else f"{g['margin']:+.4f}"
        lines.append(
            f"  {'PASS' if g['passed'] else 'FAIL'}  {g['name']:<34} {value:>8} {ci:<18} "
            f"threshold {g['threshold']}  margin {margin}"
        )
    return "\n".join(lines)


def latest_gate_report(s: Services, since: float) -> dict | None:
    """The newest `gate_report.json` under runs/release written after `since` (epoch seconds)."""
    reports = [
        p for p in (s.root / "runs" / "release").glob("*/gate_report.json") if p.stat().st_mtime >= since
    ]
    if not reports:
        return None
    return json.loads(max(reports, key=lambda p: p.stat().st_mtime).read_text())


def where_to_look(s: Services, flow_run_id: str, registry_name: str = REGISTRY_NAME) -> str:
    """Links to the Prefect run, the MLflow run and the newest registry version of the demo."""
    from mlflow import MlflowClient

    from beear_stage.release.review import review

    lines = [f"Prefect flow run: http://127.0.0.1:{s.prefect_port}/runs/flow-run/{flow_run_id}"]
    try:
        latest = review(registry_name, tracking_uri=s.tracking_uri)[0]
        experiment = MlflowClient(s.tracking_uri).get_run(latest["run_id"]).info.experiment_id
    except Exception as e:  # noqa: BLE001 (the demo still prints the rest)
        return "\n".join(lines + [f"MLflow registry: not readable ({e})"])
    aliases = ", ".join(latest["aliases"]) or "none"
    lines += [
        f"MLflow run:       {s.mlflow_url}/#/experiments/{experiment}/runs/{latest['run_id']}"
        f"  ({latest['run_name']})",
        f"Registry version: {s.mlflow_url}/#/models/{registry_name}/versions/{latest['version']}"
        f"  (gate={latest['gate']}, aliases: {aliases})",
        f"Review / approve: beear-release review --name {registry_name}; "
        f"beear-release approve {registry_name} {latest['version']}",
        "Stop services:    beear-release down",
    ]
    return "\n".join(lines)


def demo(s: Services, *, worker: bool = True, mlflow: bool = True, deployment: str = "smol") -> int:
    if deployment not in DEMOS:
        print(f"error: `--deployment` = {deployment!r}: choose one of {sorted(DEMOS)}", file=sys.stderr)
        return 2
    services.up(s, worker=worker, mlflow=mlflow)
    started = time.time()
    code, flow_run_id = run_deployment(s, f"beear-release/{deployment}", timeout_s=DEMO_TIMEOUT_S)
    report = latest_gate_report(s, started)
    if report is not None:
        print("\n" + gate_table(report))
    print("\n" + where_to_look(s, flow_run_id, DEMOS[deployment]))
    return code


def main() -> int:
    from flows.cli import main as cli_main

    return cli_main(["demo", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
