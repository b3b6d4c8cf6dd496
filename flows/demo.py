"""`make demo` / `beear-release demo`: the `smol` deployment end to end on local services.

Starts (or reuses) the local Prefect server, MLflow server, pool, deployments and worker, runs
`prefect deployment run beear-release/smol --watch` (`--deployment tiny`: the fast smoke run on a
tiny zoo model), then prints where to look: the Prefect flow
run, the MLflow run and the registry version. The services keep running for the UIs;
`beear-release down` stops them.
"""

from __future__ import annotations

import re
import subprocess
import sys
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
    proc = subprocess.Popen(
        cmd, cwd=s.root, env=s.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    run_id = ""
    for line in proc.stdout:
        print(line, end="", flush=True)
        found = re.search(r"UUID:\s*([0-9a-f-]{36})", line)
        run_id = found.group(1) if found and not run_id else run_id
    return proc.wait(), run_id


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
    code, flow_run_id = run_deployment(s, f"beear-release/{deployment}", timeout_s=DEMO_TIMEOUT_S)
    print("\n" + where_to_look(s, flow_run_id, DEMOS[deployment]))
    return code


def main() -> int:
    from flows.cli import main as cli_main

    return cli_main(["demo", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
