"""Local release infrastructure for `beear-release up` / `down` / `status`.

`up` starts, as background processes with pid files and logs under `runs/services/`:
a Prefect server (SQLite under the project-local PREFECT_HOME `.prefect/`), an MLflow server for
the review UI (same SQLite store the flows write to), then creates the process work pool, deploys
`deployments/prefect.yaml` and starts a worker. `down` stops exactly the processes whose pid files
it finds (the worker needs SIGTERM twice). `env.sh` beside the pid files exports what a shell
needs to talk to this server (`prefect deployment run ...`).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

POOL = "beear-process"
PREFECT_FILE = "deployments/prefect.yaml"


def project_root() -> Path:
    """The directory holding `deployments/prefect.yaml`: the cwd if it has one, else this checkout."""
    cwd = Path.cwd()
    return cwd if (cwd / PREFECT_FILE).is_file() else Path(__file__).resolve().parents[1]


def default_tracking_uri(root: Path | None = None) -> str:
    """The local MLflow store shared by flows, `review`/`approve` and the MLflow UI.

    Its directory is created here: the default must work on a fresh clone, where `runs/` does not
    exist yet (an explicit `--tracking-uri` is checked, never created).
    """
    runs = (root or project_root()) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{runs / 'mlflow.db'}"


@dataclass
class Services:
    """Where the local services live and how to reach them."""

    root: Path = field(default_factory=project_root)
    prefect_port: int = 4200
    mlflow_port: int = 5000
    pool: str = POOL
    state_dir: Path | None = None
    prefect_home: Path | None = None
    tracking_uri: str = ""

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir or self.root / "runs" / "services")
        self.prefect_home = Path(self.prefect_home or self.root / ".prefect")
        self.tracking_uri = self.tracking_uri or default_tracking_uri(self.root)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def env(self) -> dict[str, str]:
        """Environment for every process `up` starts (and for `env.sh`)."""
        return {
            **os.environ,
            "PREFECT_HOME": str(self.prefect_home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "2"),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            # flows started by the worker share the project's zoo cache with `beear-release run`
            "BEEAR_CACHE_DIR": os.environ.get("BEEAR_CACHE_DIR", str(self.root / ".cache")),
            # the library's progress lines (build, evaluation, mitigation: counts and an ETA) in the
            # run log and in `prefect deployment run --watch`
            "PREFECT_LOGGING_EXTRA_LOGGERS": "beear_stage",
        }

    def pid_file(self, name: str) -> Path:
        return self.state_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.state_dir / f"{name}.log"


# What the command line of each service contains: a pid file naming another process is stale.
MARKERS = {
    "prefect-server": "prefect server start",
    "mlflow-server": "mlflow server",
    "worker": "prefect worker start",
}


def _commands(s: Services) -> dict[str, list[str]]:
    bin_dir = Path(sys.executable).parent
    prefect, mlflow = str(bin_dir / "prefect"), str(bin_dir / "mlflow")
    return {
        "prefect-server": [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(s.prefect_port)],
        "mlflow-server": [
            mlflow,
            "server",
            "--workers",
            "1",
            "--host",
            "127.0.0.1",
            "--port",
            str(s.mlflow_port),
            "--backend-store-uri",
            s.tracking_uri,
        ],  # fmt: skip
        "worker": [
            prefect,
            "worker",
            "start",
            "--pool",
            s.pool,
            "--type",
            "process",
            "--name",
            f"beear-{os.getpid()}",
        ],
    }


def alive(s: Services, name: str) -> int | None:
    """The pid of service `name` if its pid file names a live process that we started, else None."""
    try:
        pid = int(s.pid_file(name).read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError, IndexError):
        return None
    return pid if MARKERS[name] in cmdline else None


def _start(s: Services, name: str, cmd: list[str]) -> int:
    s.state_dir.mkdir(parents=True, exist_ok=True)
    with s.log_file(name).open("ab") as log:
        # Own session: `down` signals the whole process group (servers fork workers).
        proc = subprocess.Popen(
            cmd, cwd=s.root, env=s.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    s.pid_file(name).write_text(f"{proc.pid}\n{shlex.join(cmd)}\n")
    return proc.pid


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _wait_healthy(s: Services, name: str, url: str, timeout: float) -> None:
    pid = int(s.pid_file(name).read_text().split()[0])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _exists(pid):  # exited: no point waiting (its log says why)
            break
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    tail = s.log_file(name).read_text(errors="replace")[-2000:] if s.log_file(name).exists() else ""
    raise RuntimeError(f"{name} did not become healthy at {url} within {timeout:.0f} s. Log tail:\n{tail}")


def _cli(s: Services, *args: str) -> None:
    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / "prefect"), "--no-prompt", *args]
    proc = subprocess.run(cmd, cwd=s.root, env=s.env(), capture_output=True, text=True)
    with s.log_file("setup").open("a") as log:
        log.write(f"$ {shlex.join(cmd)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        raise RuntimeError(
            f"`{shlex.join(cmd)}` failed ({proc.returncode}):\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}"
        )


def up(s: Services, *, worker: bool = True, mlflow: bool = True, deploy: bool = True, echo=print) -> None:
    """Start the servers, create the pool, deploy and start a worker; skip what already runs."""
    wanted = ["prefect-server"] + (["mlflow-server"] if mlflow else [])
    ports = {"prefect-server": s.prefect_port, "mlflow-server": s.mlflow_port}
    commands = _commands(s)
    for name in wanted:
        if alive(s, name):
            echo(f"{name} already running (pid {alive(s, name)})")
        elif not _port_free(ports[name]):
            raise RuntimeError(
                f"port {ports[name]} is in use by another process; {name} cannot start. "
                f"Fix: stop it, or pass --{name.split('-')[0]}-port."
            )
        else:
            echo(f"starting {name} (log {s.log_file(name)})")
            _start(s, name, commands[name])
    _wait_healthy(s, "prefect-server", f"{s.api_url}/health", timeout=120)
    if mlflow:
        _wait_healthy(s, "mlflow-server", f"{s.mlflow_url}/health", timeout=120)
    if deploy:
        echo(f"creating work pool {s.pool} and deploying {PREFECT_FILE}")
        _cli(s, "work-pool", "create", s.pool, "--type", "process", "--overwrite")
        _cli(s, "deploy", "--all", "--prefect-file", str(s.root / PREFECT_FILE))
    if worker and not alive(s, "worker"):
        echo(f"starting worker on pool {s.pool} (log {s.log_file('worker')})")
        _start(s, "worker", commands["worker"])
    write_env(s)


def write_env(s: Services) -> Path:
    env = s.env()
    keys = (
        "PREFECT_HOME",
        "PREFECT_API_URL",
        "PREFECT_SERVER_ANALYTICS_ENABLED",
        "MLFLOW_TRACKING_URI",
        "BEEAR_CACHE_DIR",
    )
    path = s.state_dir / "env.sh"
    path.write_text(
        "".join(f"export {k}={shlex.quote(env[k])}\n" for k in keys)
        + "export MLFLOW_DISABLE_TELEMETRY=true\n"
    )
    return path


def _stop(s: Services, name: str, echo=print, timeout: float = 20.0) -> None:
    pid = alive(s, name)
    if pid is None:
        s.pid_file(name).unlink(missing_ok=True)
        return
    echo(f"stopping {name} (pid {pid})")
    # The worker ignores the first SIGTERM (it starts a graceful shutdown); send two.
    for _ in range(2 if name == "worker" else 1):
        _signal_group(pid, signal.SIGTERM)
        time.sleep(1.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _exists(pid):
        time.sleep(0.3)
    if _exists(pid):
        echo(f"{name} still running after {timeout:.0f} s; sending SIGKILL")
        _signal_group(pid, signal.SIGKILL)
    s.pid_file(name).unlink(missing_ok=True)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # we started it as a session leader: pgid == pid
    except ProcessLookupError:
        pass


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as stopped
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def flow_run_processes(s: Services) -> list[int]:
    """Flow-run processes our worker started (`python -m prefect.engine` talking to our server).

    The process worker starts each run in its own session, so stopping the worker leaves in-flight
    runs behind; they are found by their command line and their PREFECT_API_URL.
    """
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if b"prefect.engine" not in cmdline:
                continue
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PREFECT_API_URL={s.api_url}".encode() in environ:
            pids.append(int(proc.name))
    return pids


def down(s: Services, echo=print) -> None:
    """Stop the worker and the flow runs it started, then the servers (pid files from `up`)."""
    _stop(s, "worker", echo)
    for pid in flow_run_processes(s):
        echo(f"stopping in-flight flow run process {pid}")
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _exists(pid):
            time.sleep(0.3)
        if _exists(pid):
            _signal_group(pid, signal.SIGKILL)
    for name in ("mlflow-server", "prefect-server"):
        _stop(s, name, echo)


def status(s: Services) -> dict[str, int | None]:
    return {name: alive(s, name) for name in ("prefect-server", "mlflow-server", "worker")}
