"""`beear-release`: run the release flow in-process, manage local services, review the registry.

    beear-release run --checkpoint PATH_OR_REPO [--revision SHA] [--config YAML] [--publish-to REPO]
    beear-release up | down | status          local Prefect + MLflow servers, pool, deployments, worker
    beear-release demo [--deployment smol]    up, then `prefect deployment run beear-release/smol --watch`
    beear-release review [--name NAME]        registry versions with gate tag, aliases, metrics
    beear-release approve NAME VERSION        alias `champion` (after human review)

Exit codes of `run`: 0 all gates passed, 1 GateFailed, 2 bad input (a `BEEARError`: config, data,
checkpoint), 3 the run failed for another reason, 128 + N stopped by signal N (143 SIGTERM, 130
SIGINT: the MLflow run ends FAILED and every child process is stopped, `flows/shutdown.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

EXIT_PASSED, EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_ERROR = 0, 1, 2, 3
# Defaults for the run's environment; a value the user has set wins (setdefault in `main`).
DEFAULT_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # the library's progress lines (counts and an ETA) in the run log
    "PREFECT_LOGGING_EXTRA_LOGGERS": "beear_stage",
    # Prefect's temporary server gets 20 s to start by default; on 2 busy cores that is too short,
    # and the run died before its first task ("Timed out while attempting to connect").
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def _key_value(text: str) -> tuple[str, Any]:
    """`key=value` with a YAML-typed value (`rounds=4` -> int, `method=none` -> str).

    A malformed pair is an argparse error (exit 2). Whether the value suits the key is checked by
    `BEEARConfig` / `GateThresholds` in `flow_parameters` (also exit 2): `rounds=` reads as null and
    `layer=[1]` as a list, and both are refused there with the key, the value and the fix.
    """
    import yaml

    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE, got {text!r}. Fix: e.g. --set rounds=4 or --gate asr_max=0.05"
        )
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as e:
        why = " ".join(str(e).split())
        raise argparse.ArgumentTypeError(
            f"`{key}` = {value!r} is not a YAML value ({why}). Fix: write a number, a word or a "
            f"quoted string, e.g. {key}=4 or {key}='text'"
        ) from e


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="beear-release", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the release flow in-process (no server needed)")
    run.add_argument("--checkpoint", required=True, help="Hub repo id, local HF directory, or zoo:<name>")
    run.add_argument("--revision", default="", help="Hub branch, tag or commit (pinned to the full SHA)")
    run.add_argument("--config", default="", help="BEEAR config YAML (default: built-in defaults)")
    run.add_argument("--set", dest="overrides", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                     help="override one config key, e.g. --set rounds=4 (repeatable)")  # fmt: skip
    run.add_argument("--gate", dest="gates", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                     help="gate threshold, e.g. --gate asr_max=0.1 (repeatable)")  # fmt: skip
    run.add_argument(
        "--publish-to", default="", help="Hub repo for a passing candidate (default: registry only)"
    )
    run.add_argument("--public", action="store_true", help="create the Hub repo public (default private)")
    run.add_argument("--known-trigger", dest="known_triggers", action="append", default=[],
                     help="trigger to probe ASR with ('{query} SUDO' or a suffix; repeatable)")  # fmt: skip
    for name in ("safety-anchoring", "performance-anchoring", "harmful-eval", "benign-eval"):
        run.add_argument(f"--{name}", default="", help=f"{name.replace('-', ' ')} file (default: built-in)")
    run.add_argument(
        "--eval-limit", type=int, default=0, help="N evenly spaced prompts of each eval set (0 = all)"
    )
    run.add_argument("--builtin", choices=("jailbreak", "code"), default="jailbreak",
                     help="built-in sets behind empty paths (code: coding anchoring and prompts)")  # fmt: skip
    run.add_argument("--code-eval", default="",
                     help="coding prompts for the insecure-code gate: 'builtin' or a file (default: off)")  # fmt: skip
    run.add_argument("--lookalike-eval", default="",
                     help="safe look-alike prompts for over-refusal: XSTest-format CSV (default: built-in)")  # fmt: skip
    run.add_argument(
        "--tracking-uri", default="", help="MLflow URI (default sqlite:///<project>/runs/mlflow.db)"
    )
    run.add_argument("--registry-name", default="beear-release", help="MLflow registered model name")
    run.add_argument("--output-dir", default="runs/release", help="root of per-candidate outputs")
    run.add_argument("--json", action="store_true", help="print the result as JSON")

    for name, help_text in (
        ("up", "start Prefect + MLflow servers, create the pool, deploy, start a worker"),
        ("demo", "`up`, then run a deployment (default smol) and print where to look"),
    ):
        p = sub.add_parser(name, help=help_text)
        if name == "demo":
            p.add_argument("--deployment", default="smol", help="deployment to run: smol (default) or tiny")
        p.add_argument("--prefect-port", type=int, default=4200)
        p.add_argument("--mlflow-port", type=int, default=5000)
        p.add_argument("--no-worker", action="store_true", help="do not start a worker")
        p.add_argument("--no-mlflow", action="store_true", help="do not start the MLflow UI server")
    sub.add_parser("down", help="stop the services `up` started")
    sub.add_parser("status", help="show which services run")

    review = sub.add_parser("review", help="list registry versions with gate tag, aliases and metrics")
    review.add_argument("--name", default="beear-tiny", help="registered model name")
    review.add_argument("--tracking-uri", default="")
    review.add_argument("--json", action="store_true")
    approve = sub.add_parser("approve", help="set alias `champion` on a gated version")
    approve.add_argument("name")
    approve.add_argument("version")
    approve.add_argument("--tracking-uri", default="")
    approve.add_argument("--force", action="store_true", help="approve even if gate=failed")
    return parser


def flow_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """Flow parameters from `run` arguments; the config is resolved here so bad input fails fast."""
    from beear_stage.gates.evaluator import GateThresholds
    from flows.release import check_release_options, resolve_config

    config = resolve_config(args.config)
    if args.overrides:
        config = config.from_dict(config.to_dict(), **dict(args.overrides))
    GateThresholds.from_dict(dict(args.gates))  # a bad --gate fails here, not after the baseline
    check_release_options(
        checkpoint=args.checkpoint,
        eval_limit=args.eval_limit,
        publish_to=args.publish_to,
        registry_name=args.registry_name,
        output_dir=args.output_dir,
    )
    data = {
        "safety_anchoring": args.safety_anchoring,
        "performance_anchoring": args.performance_anchoring,
        "harmful_eval": args.harmful_eval,
        "benign_eval": args.benign_eval,
        "eval_limit": args.eval_limit,
        "builtin": args.builtin,
        "code_eval": args.code_eval,
        "lookalike_eval": args.lookalike_eval,
    }
    return {
        "checkpoint": args.checkpoint,
        "revision": args.revision,
        "config": config.to_dict(),
        "data": data,
        "gates": dict(args.gates) or None,
        "publish_to": args.publish_to,
        "private": not args.public,
        "known_triggers": args.known_triggers or None,
        "tracking_uri": args.tracking_uri,
        "registry_name": args.registry_name,
        "output_dir": args.output_dir,
    }


def cmd_run(args: argparse.Namespace) -> int:
    from beear_stage.exceptions import BEEARError

    try:
        params = flow_parameters(args)
    except BEEARError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from flows.release import release
    from flows.shutdown import cleanup, stop_on_signals

    with stop_on_signals(params["tracking_uri"]) as guard:
        try:
            state = release(**params, return_state=True)
        except BaseException:  # Stopped, or whatever Prefect made of it while unwinding
            if guard.signum is None:
                raise
        guard.cleaning = True  # the flow is over: a signal now must not interrupt what follows
        if guard.signum is not None:  # the flow closed its run FAILED; atexit stops Prefect's server
            name = signal.Signals(guard.signum).name
            cleanup(params["tracking_uri"], f"stopped by {name}", children=False)
            print(f"error: stopped by {name}; the MLflow run is marked FAILED", file=sys.stderr)
            return 128 + guard.signum
    if state.is_completed():
        result = state.result()
        print(json.dumps(result, indent=1, default=str) if args.json else _summary(result))
        return EXIT_PASSED
    if state.name == "GateFailed":
        print(f"GateFailed: {state.message}", file=sys.stderr)
        return EXIT_GATE_FAILED
    error = state.result(raise_on_failure=False)
    print(f"error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT if isinstance(error, BEEARError) else EXIT_ERROR


def _summary(result: dict) -> str:
    reg = result["registry"]
    lines = [
        "all gates passed",
        f"  outputs:  {result['output_dir']}",
        f"  MLflow:   run {result['mlflow_run_id']}; registry {reg['name']} version {reg['version']} "
        f"(aliases {', '.join(reg['aliases']) or '-'})",
    ]
    if result.get("hub"):
        lines.append(f"  Hub:      {result['hub']['url']}")
    return "\n".join(lines)


def _services(args: argparse.Namespace):
    from flows.services import Services

    return Services(
        prefect_port=getattr(args, "prefect_port", 4200), mlflow_port=getattr(args, "mlflow_port", 5000)
    )


def cmd_up(args: argparse.Namespace) -> int:
    from flows import services

    s = _services(args)
    services.up(s, worker=not args.no_worker, mlflow=not args.no_mlflow)
    print(where(s))
    return 0


def where(s) -> str:
    return "\n".join(
        [
            f"Prefect UI:  http://127.0.0.1:{s.prefect_port}  (runs of flow `beear-release`)",
            f"MLflow UI:   {s.mlflow_url}  (experiment `beear-release`, Models -> registry)",
            f"logs, pids:  {s.state_dir}",
            f"shell setup: source {s.state_dir / 'env.sh'}   (then `prefect deployment run beear-release/smol --watch`)",
        ]
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import demo

    return demo(
        _services(args), worker=not args.no_worker, mlflow=not args.no_mlflow, deployment=args.deployment
    )


def cmd_down(args: argparse.Namespace) -> int:
    from flows import services

    services.down(_services(args))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from flows import services

    s = _services(args)
    for name, pid in services.status(s).items():
        print(f"{name:<15} {'running, pid ' + str(pid) if pid else 'stopped'}")
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from beear_stage.release.review import review
    from flows.services import default_tracking_uri

    rows = review(args.name, tracking_uri=args.tracking_uri or default_tracking_uri())
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    print(review_text(rows))
    return 0


def review_text(rows: list[dict]) -> str:
    """One summary line per version, then each version's description (its gate table and run)."""
    lines = [
        f"{'version':>7}  {'gate':<7} {'run':<9} {'aliases':<20} {'method':<6} {'after/asr_clean':>15}  run"
    ]
    for r in rows:
        asr = r["metrics"].get("after/asr_clean")
        lines.append(
            f"{r['version']:>7}  {r['gate']:<7} {r['run_status'] or '-':<9} {','.join(r['aliases']) or '-':<20} "
            f"{r['method'] or '-':<6} {'-' if asr is None else f'{asr:.3f}':>15}  {r['run_name']}"
        )
    for r in rows:
        lines += [
            "",
            f"--- version {r['version']} (run {r['run_status'] or 'unknown'})",
            r["description"] or "-",
        ]
    return "\n".join(lines)


def cmd_approve(args: argparse.Namespace) -> int:
    from beear_stage.exceptions import BEEARError
    from beear_stage.release.review import approve
    from flows.services import default_tracking_uri

    try:
        out = approve(
            args.name,
            args.version,
            tracking_uri=args.tracking_uri or default_tracking_uri(),
            force=args.force,
        )
    except BEEARError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{out['name']} version {out['version']} (gate={out['gate']}) is now `champion`")
    return 0


COMMANDS = {
    "run": cmd_run,
    "up": cmd_up,
    "demo": cmd_demo,
    "down": cmd_down,
    "status": cmd_status,
    "review": cmd_review,
    "approve": cmd_approve,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for key, value in DEFAULT_ENV.items():  # before prefect / mlflow are imported
        os.environ.setdefault(key, value)
    from flows.services import project_root

    os.environ.setdefault("BEEAR_CACHE_DIR", str(project_root() / ".cache"))  # zoo models, shared with `up`
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
