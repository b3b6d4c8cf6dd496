"""MLflow tracking and model registry for release candidates.

API:
    check_tracking_reachable(uri, timeout=3.0) -> None       fail fast (ConfigError) before expensive work
    release_run_name(checkpoint, sha) -> "<checkpoint>@<short sha>"
    MLflowTracker(tracking_uri, experiment="beear-release", *, artifact_location=None, registry_uri=None)
        .start(run_name, tags=None) -> self | .attach(run_id) -> self      (then `with tracker:` ...)
        metric-logger protocol: .log(name, value, step=None), .log_dict(metrics, step=None),
                                .log_config(config), .close(status="FINISHED")
        .log_candidate(config=, before=, after=, history=, generations=, report=)  everything below:
        .log_eval(before, after)         metrics before/<m>, after/<m> (':' etc. -> '_')
        .log_history(history)            mitigation/<loss> with step = BEEAR round or CROW step
        .log_gate_report(report)         gate/<result> metrics, gate_report.md/.json, run tag gate=
        .log_generations(rows)           generations.jsonl
        .log_plots(history, before, after)  plots/*.png
        .register_checkpoint(checkpoint_dir, model_name, *, gate_passed, source_repo, source_sha,
                             method, description=None) -> dict(name, version, source, aliases)
        .fail_stale_runs(run_name, tags=None) -> int   mark RUNNING runs of that name (and tags) FAILED
                                    when their process is gone (after a hard kill)
Human review of registered versions (`review`, `approve`) lives in `beear_stage.release.review`.

`with tracker.start(name):` ends the run FINISHED, FAILED when an exception escapes, and KILLED on
KeyboardInterrupt or another BaseException (e.g. an orchestrator's cancellation signal). A SIGKILL
skips all of that: `start` tags each run with its owner (`beear.host`, `beear.pid`), and the next
run of the same candidate calls `fail_stale_runs`, which marks runs whose process is gone FAILED,
tags the model versions they registered `run_status=FAILED` and removes their aliases; `approve`
(`beear_stage.release.review`) refuses a version whose run did not finish.

The checkpoint is registered without the transformers flavour: its directory is logged as
artifacts under `checkpoint/` and a model version is created from `runs:/<run_id>/checkpoint`
(`mlflow.register_model` refuses that URI in MLflow 3 because it holds no MLmodel file). The
`candidate` alias moves only when the gates passed; `approve` sets `champion`.

Secrets: config keys that look like credentials are redacted, nothing from the environment is
logged, and URIs are shown without their password. Set MLFLOW_DISABLE_TELEMETRY=true in the
environment of the process (the library does not touch the environment).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from beear_stage.exceptions import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
OWNER_HOST, OWNER_PID = "beear.host", "beear.pid"  # run tags: the process that owns a RUNNING run
_TRUNCATED = "...[truncated]"
# Credential-shaped key names: `hf_token`, `api_token`, `access_token`, `auth_token`, `token`,
# `api_key`, `secret_key`, `private_key`, `password`, `client_secret`, `authorization`, ... The
# name is split into words (`_`, `-`, `.`, camelCase) and checked word by word, so counts that
# merely mention tokens (`max_new_tokens`, `response_tokens`, `pa_answer_tokens`) or keys
# (`refusal_keywords`, `key_column`) stay readable: they are needed to reproduce a run.
_SECRET_WORDS = frozenset(
    {"token", "secret", "secrets", "password", "passwd", "passphrase", "pwd", "credential",
     "credentials", "authorization", "auth", "apikey", "cookie", "bearer"}
)  # fmt: skip
_KEY_QUALIFIERS = frozenset({"api", "secret", "private", "access", "auth", "signing", "encryption"})
_BAD_METRIC_CHARS = re.compile(r"[^A-Za-z0-9_.\- ]+")


def is_secret_key(name: Any) -> bool:
    """True when a config key names a credential (`hf_token`, `API_KEY`, `db.password`), not a
    count or setting that mentions one (`max_new_tokens`, `response_tokens`, `refusal_keywords`)."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", str(name))
    words = [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]
    if any(w in _SECRET_WORDS for w in words):
        return True
    # `api_key`, `secret_key`, `private_key`: a key with a qualifier, never a bare `key`
    return any(
        w in ("key", "keys") and i > 0 and words[i - 1] in _KEY_QUALIFIERS for i, w in enumerate(words)
    )


# ------------------------------------------------------------------------------------ helpers
def sanitize_metric_name(name: str) -> str:
    """Make one metric name component portable: `asr_trigger:SUDO` -> `asr_trigger_SUDO`."""
    clean = _BAD_METRIC_CHARS.sub("_", name).strip(" .")
    return clean or "_"


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested config into MLflow params: dotted keys, JSON for lists, secrets redacted,
    values cut to MLflow's 6000-character limit (the full config is also logged as YAML)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, prefix=f"{full}."))
            continue
        if is_secret_key(key):
            text = "***redacted***"
        elif isinstance(value, str):
            text = value
        else:
            text = json.dumps(value, default=str)
        if len(text) > MAX_PARAM_CHARS:
            text = text[: MAX_PARAM_CHARS - len(_TRUNCATED)] + _TRUNCATED
        flat[_BAD_METRIC_CHARS.sub("_", full)[:250]] = text
    return flat


def _redact_config(config: Any) -> Any:
    if isinstance(config, Mapping):
        return {k: "***redacted***" if is_secret_key(k) else _redact_config(v) for k, v in config.items()}
    if isinstance(config, list | tuple):
        return [_redact_config(v) for v in config]
    return config


def safe_uri(uri: str) -> str:
    """`uri` with any password removed, for messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _quote(value: str) -> str:
    """A string literal for an MLflow filter expression."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def release_run_name(checkpoint: str, sha: str | None) -> str:
    """Run name of a release candidate: `<checkpoint>@<short sha>` (a local path contributes its name)."""
    ref = str(checkpoint).rstrip("/")
    if ref.startswith(("/", ".", "~")) or Path(ref).is_dir():
        ref = Path(ref).name
    return f"{ref}@{(sha or 'unversioned')[:7]}"


def check_tracking_reachable(uri: str, timeout: float = 3.0) -> None:
    """Fail fast when the tracking store cannot be used.

    http(s) URIs get a GET `<uri>/health` with a short timeout; sqlite and file stores need an
    existing, writable parent directory; other schemes are not checked.

    Raises:
        ConfigError: naming `tracking_uri`, the URI (password hidden), the cause and the fix.
    """
    import os
    import urllib.error
    import urllib.request

    from mlflow.utils.uri import is_databricks_uri

    shown = safe_uri(uri)
    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                if resp.status == 200:
                    return
                why = f"/health answered HTTP {resp.status}"
        except urllib.error.HTTPError as e:
            why = f"/health answered HTTP {e.code}"
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            why = f"no answer within {timeout:g} s ({getattr(e, 'reason', e)})"
        raise ConfigError(
            f"`tracking_uri` = {shown!r}: MLflow tracking server unreachable: {why}. Fix: start it "
            "(`mlflow server --backend-store-uri sqlite:///mlflow.db --workers 1`), or use a local "
            "store such as `sqlite:///mlflow.db`."
        )
    if scheme == "sqlite":
        path = uri.split("sqlite:///", 1)[-1]
        if not path or path == ":memory:":
            return
        parent = Path(path).expanduser().resolve().parent
    elif scheme in ("", "file") and not is_databricks_uri(uri):
        given = Path(urlsplit(uri).path if scheme else uri).expanduser().resolve()
        _check_file_store_allowed(shown, given)
        parent = given if given.is_dir() else given.parent
    else:
        logger.info("tracking URI scheme %r is not checked before the run", scheme)
        return
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ConfigError(
            f"`tracking_uri` = {shown!r}: directory {str(parent)!r} does not exist or is not writable. "
            f"Fix: create it (`mkdir -p {parent}`) or choose another location."
        )


def _check_file_store_allowed(shown: str, directory: Path) -> None:
    """MLflow 3.x refuses a directory ("file store") as tracking URI unless MLFLOW_ALLOW_FILE_STORE
    is set; say so before the run, not after the checkpoint has been pulled and built."""
    from mlflow import environment_variables as mlflow_env

    allow = getattr(mlflow_env, "MLFLOW_ALLOW_FILE_STORE", None)  # absent: file stores still work
    if allow is None or allow.get():
        return
    raise ConfigError(
        f"`tracking_uri` = {shown!r}: a directory (MLflow file store), which this MLflow refuses "
        f'("maintenance mode"). Fix: use a SQLite store, e.g. `sqlite:///{directory}/mlflow.db` '
        "(the directory must exist), or set MLFLOW_ALLOW_FILE_STORE=true to keep the file store."
    )


def _create_sqlite_store_once(uri: str) -> None:
    """Create a local SQLite store's tables under an exclusive file lock (`<db>.lock`).

    Two processes that open a new store at once both run MLflow's schema migrations, and one of
    them fails ("Online migration expected to match one row"): concurrent candidates on a fresh
    store would lose a run. Other stores, and platforms without `fcntl`, are left alone.
    """
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return
    try:
        import fcntl
    except ImportError:  # not POSIX
        return
    from mlflow import MlflowClient

    db = Path(uri.removeprefix("sqlite:///"))
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


# ------------------------------------------------------------------------------------ tracker
class MLflowTracker:
    """One MLflow run per release candidate, through an explicit `MlflowClient` (no global state).

    Args:
        tracking_uri: e.g. `sqlite:///runs/mlflow.db` or `http://127.0.0.1:5000`.
        experiment: experiment name, created on first use.
        artifact_location: artifact root for a new experiment (None = MLflow's default).
        registry_uri: model registry URI (None = `tracking_uri`).
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str = "beear-release",
        *,
        artifact_location: str | None = None,
        registry_uri: str | None = None,
    ) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        _create_sqlite_store_once(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)
        self.experiment = experiment
        self.artifact_location = artifact_location
        self.run_id: str | None = None

    # -------------------------------------------------------------- run lifecycle
    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(self.experiment, artifact_location=self.artifact_location)
        except MlflowException:  # created concurrently by another candidate
            return self.client.get_experiment_by_name(self.experiment).experiment_id

    def start(self, run_name: str, tags: Mapping[str, str] | None = None) -> MLflowTracker:
        """Create the run (status RUNNING); use the tracker as a context manager to end it."""
        from beear_stage.release.checkpointing import host_name

        owner = {OWNER_HOST: host_name(), OWNER_PID: str(os.getpid())}
        run = self.client.create_run(
            self._experiment_id(), run_name=run_name, tags={**owner, **dict(tags or {})}
        )
        self.run_id = run.info.run_id
        logger.info("MLflow run %s (%s) started in %s", run_name, self.run_id, safe_uri(self.tracking_uri))
        return self

    def attach(self, run_id: str) -> MLflowTracker:
        """Continue logging to an existing run (e.g. one started by an earlier task)."""
        self.client.get_run(run_id)  # raises when it does not exist
        self.run_id = run_id
        return self

    def fail_stale_runs(self, run_name: str, tags: Mapping[str, str] | None = None) -> int:
        """Mark RUNNING runs named `run_name` (and carrying `tags`) FAILED when the process that
        owns them is gone (killed hard); returns how many.

        A run whose owner (`beear.host`, `beear.pid` tags) is another live process of this host is
        left alone: it is a concurrent run, not a stale one. Model versions a stale run registered get
        the tag `run_status=FAILED` and lose their aliases, so a half-finished registration is
        never served or approved.
        """
        from beear_stage.release.checkpointing import host_name, pid_alive

        found = self.client.get_experiment_by_name(self.experiment)
        if found is None:
            return 0
        clauses = [f"attributes.run_name = {_quote(run_name)}", "attributes.status = 'RUNNING'"]
        clauses += [f"tags.`{k}` = {_quote(v)}" for k, v in (tags or {}).items()]
        stale = []
        for run in self.client.search_runs([found.experiment_id], filter_string=" and ".join(clauses)):
            pid = run.data.tags.get(OWNER_PID, "")
            # another live process of this host; in this process, an open run is one that leaked
            live = (
                run.data.tags.get(OWNER_HOST) == host_name()
                and pid.isdigit()
                and int(pid) != os.getpid()
                and pid_alive(int(pid))
            )
            if run.info.run_id != self.run_id and not live:
                stale.append(run.info.run_id)
        for run_id in stale:
            self._mark_failed(run_id, "stale: process ended without closing the run")
            logger.warning("MLflow run %s was left RUNNING by a dead process; marked FAILED", run_id)
        return len(stale)

    def fail_own_runs(self, reason: str) -> int:
        """Mark every RUNNING run owned by this process (`beear.host`, `beear.pid`) FAILED with tag
        `error=<reason>`; returns how many. Used when the process is stopped by a signal."""
        from beear_stage.release.checkpointing import host_name

        found = self.client.get_experiment_by_name(self.experiment)
        if found is None:
            return 0
        clauses = [
            "attributes.status = 'RUNNING'",
            f"tags.`{OWNER_HOST}` = {_quote(host_name())}",
            f"tags.`{OWNER_PID}` = {_quote(str(os.getpid()))}",
        ]
        runs = self.client.search_runs([found.experiment_id], filter_string=" and ".join(clauses))
        for run in runs:
            self._mark_failed(run.info.run_id, reason)
        return len(runs)

    def _mark_failed(self, run_id: str, reason: str) -> None:
        """End `run_id` FAILED; its model versions get `run_status=FAILED` and lose their aliases,
        so a half-finished registration is never served or approved."""
        self.client.set_tag(run_id, "error", reason)
        self.client.set_terminated(run_id, "FAILED")
        for found in self.client.search_model_versions(f"run_id = {_quote(run_id)}"):
            # search results carry no aliases in MLflow 3: read the version itself
            mv = self.client.get_model_version(found.name, found.version)
            self.client.set_model_version_tag(mv.name, mv.version, "run_status", "FAILED")
            for alias in mv.aliases:
                self.client.delete_registered_model_alias(mv.name, alias)

    def close(self, status: str = "FINISHED") -> None:
        """End the run with `status` (FINISHED, FAILED or KILLED); a no-op when no run is open."""
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)
            logger.info("MLflow run %s ended %s", self.run_id, status)
            self.run_id = None

    def __enter__(self) -> MLflowTracker:
        if self.run_id is None:
            raise RuntimeError("call `start(run_name)` or `attach(run_id)` before `with tracker:`")
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close("FINISHED")
            return False
        # never let a tracking-store error mask the exception that is escaping
        try:
            if self.run_id is not None:
                self.client.set_tag(self.run_id, "error", exc_type.__name__)
            self.close("FAILED" if issubclass(exc_type, Exception) else "KILLED")
        except Exception:
            logger.warning("could not mark MLflow run %s as ended", self.run_id, exc_info=True)
        return False

    def _run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("no MLflow run is open: call `start(run_name)` or `attach(run_id)` first")
        return self.run_id

    # -------------------------------------------------------------- metric-logger protocol
    def log(self, name: str, value: float, step: int | None = None) -> None:
        self.log_dict({name: value}, step=step)

    def log_dict(self, metrics: Mapping[str, float | None], step: int | None = None) -> None:
        """Log numeric metrics (None skipped); each '/'-separated name part is sanitized."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric("/".join(sanitize_metric_name(p) for p in key.split("/")), float(v), now, step or 0)
            for key, v in metrics.items()
            if v is not None
        ]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self._run(), metrics=batch[i : i + 1000])

    def log_config(self, config: Any) -> None:
        """Log the full resolved config: flattened params and `config.yaml` (secrets redacted)."""
        import yaml
        from mlflow.entities import Param

        data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        params = [Param(k, v) for k, v in flatten_params(data).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self._run(), params=params[i : i + 100])
        text = yaml.safe_dump(_redact_config(data), sort_keys=True, default_flow_style=False)
        self.client.log_text(self._run(), text, "config.yaml")

    # -------------------------------------------------------------- release candidate content
    def log_eval(self, before: Mapping[str, float | None], after: Mapping[str, float | None]) -> None:
        """Every evaluation metric of the baseline (`before/...`) and the candidate (`after/...`)."""
        self.log_dict({f"before/{sanitize_metric_name(k)}": v for k, v in before.items()})
        self.log_dict({f"after/{sanitize_metric_name(k)}": v for k, v in after.items()})

    def log_history(self, history: Sequence[Mapping[str, Any]]) -> None:
        """Step-wise mitigation metrics (`mitigation/inner_loss`, ...), step = BEEAR round or CROW step."""
        for i, row in enumerate(history):
            step = int(row.get("round", row.get("step", i)))
            values = {
                f"mitigation/{k}": v
                for k, v in row.items()
                if k not in ("round", "step") and isinstance(v, int | float)
            }
            self.log_dict(values, step=step)

    def log_gate_report(self, report: Any) -> None:
        """Gate values (`gate/<result>`), `gate_report.md`, `gate_report.json` and the run tag `gate`."""
        from beear_stage.gates.evaluator import GateReport

        if not isinstance(report, GateReport):
            report = GateReport.from_dict(report)
        self.log_dict({f"gate/{sanitize_metric_name(k)}": v for k, v in report.metrics().items()})
        self.client.log_text(self._run(), report.to_markdown(), "gate_report.md")
        self.client.log_dict(self._run(), report.to_dict(), "gate_report.json")
        self.client.set_tag(self._run(), "gate", "passed" if report.passed else "failed")

    def log_generations(self, rows: Sequence[Mapping[str, Any]], name: str = "generations.jsonl") -> None:
        """Generations as JSON lines (`{prompt, condition, response, refusal, success}`)."""
        text = "".join(json.dumps(dict(r), ensure_ascii=False, default=str) + "\n" for r in rows)
        self.client.log_text(self._run(), text, name)

    def log_plots(self, history, before, after) -> None:
        """Loss curves and ASR before/after as PNG under `plots/`."""
        from beear_stage.release.plots import save_plots

        with tempfile.TemporaryDirectory(prefix="beear-plots-") as tmp:
            for path in save_plots(tmp, history, before, after):
                self.client.log_artifact(self._run(), str(path), "plots")

    def log_candidate(
        self, *, config=None, before=None, after=None, history=(), generations=(), report=None
    ) -> None:
        """Log everything known about a release candidate (each part skipped when not given)."""
        if config is not None:
            self.log_config(config)
        if before is not None and after is not None:
            self.log_eval(before, after)
            self.log_plots(history, before, after)
        if history:
            self.log_history(history)
        if generations:
            self.log_generations(generations)
        if report is not None:
            self.log_gate_report(report)

    def register_checkpoint(
        self,
        checkpoint_dir: str | Path,
        model_name: str,
        *,
        gate_passed: bool,
        source_repo: str,
        source_sha: str,
        method: str,
        description: str | None = None,
    ) -> dict[str, Any]:
        """Log `checkpoint_dir`'s release files under `checkpoint/` and register them as a new version.

        Only `beear_stage.release.intake.release_files` are logged: the allow-listed regular files
        (weights, configs, tokenizer, chat template, card, provenance), never a pickle or a link.

        Tags: gate=passed|failed, source_repo, source_sha, method. The `candidate` alias moves to
        the new version only when `gate_passed`.

        Raises:
            CheckpointError: the directory is missing, empty or incomplete, or holds a symlink.
        """
        from mlflow.exceptions import MlflowException

        from beear_stage.release.checkpointing import check_complete
        from beear_stage.release.intake import release_files

        path = Path(checkpoint_dir)
        if not path.is_dir() or not any(path.iterdir()):
            raise CheckpointError(
                f"`checkpoint_dir` = {str(path)!r} is missing or empty; nothing to register. "
                "Fix: pass the directory written by save_checkpoint."
            )
        check_complete(path)
        run_id = self._run()
        # only the allow-listed regular files: no symlink target, pickle or stray file is registered
        for file in release_files(path):
            rel = file.relative_to(path).parent.as_posix()
            self.client.log_artifact(run_id, str(file), "checkpoint" if rel == "." else f"checkpoint/{rel}")
        try:
            self.client.create_registered_model(model_name)
        except MlflowException as e:
            if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        gate = "passed" if gate_passed else "failed"
        tags = {"gate": gate, "source_repo": source_repo, "source_sha": source_sha, "method": method}
        text = (
            description
            or f"{method} candidate of {source_repo}@{source_sha[:12]}; gates {gate}; run {run_id}"
        )
        version = self.client.create_model_version(
            model_name, source=f"runs:/{run_id}/checkpoint", run_id=run_id, tags=tags, description=text
        )
        if gate_passed:
            self.client.set_registered_model_alias(model_name, "candidate", version.version)
        self.client.set_tag(run_id, "registered_version", f"{model_name}/{version.version}")
        aliases = ["candidate"] if gate_passed else []
        logger.info("registered %s version %s (gate=%s)", model_name, version.version, gate)
        return {
            "name": model_name,
            "version": str(version.version),
            "source": version.source,
            "aliases": aliases,
        }
