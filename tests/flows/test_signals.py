"""Signals: SIGTERM / SIGINT stop `beear-release run` within 30 s, run FAILED, no process left.

The end-to-end case starts the real CLI in a child process (its own session, so every process it
starts can be found by session id), on the tiny zoo model with the full tiny config (a mitigation
of minutes), waits for the log line of the mitigation start, sends the signal and times the exit.
Without PREFECT_API_URL the CLI starts Prefect's temporary server as a child, as a user's run does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "beear_stage" / "configs" / "zoo.yaml")
EXPERIMENT = "beear-release"


def _session(sid: int) -> list[psutil.Process]:
    """Live processes of session `sid` (the CLI child and everything it started)."""
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_mitigation_stops_the_run_within_30_s(zoo_suffix, tmp_path, signum):
    from mlflow import MlflowClient

    db = tmp_path / "mlflow.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "flows.cli", "run", "--checkpoint", "zoo:suffix", "--config", TINY,
           "--eval-limit", "4", "--tracking-uri", f"sqlite:///{db}", "--registry-name", "signals",
           "--output-dir", str(tmp_path / "runs")]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 600
        while not any("mitigation started" in line for line in lines):
            assert proc.poll() is None, "".join(lines[-60:])
            assert time.monotonic() < deadline, "mitigation never started:\n" + "".join(lines[-60:])
            time.sleep(0.5)
        # the library's progress lines reach the run log: the baseline's generation counts
        assert any("responses: 0/" in line for line in lines), "".join(lines[-60:])
        time.sleep(2)  # inside the BEEAR loop
        started = [p.pid for p in _session(proc.pid) if p.pid != proc.pid]
        assert any("uvicorn" in " ".join(psutil.Process(p).cmdline()) for p in started), (
            "Prefect's temporary server should be a child of the run"
        )
        sent = time.monotonic()
        proc.send_signal(signum)
        code = proc.wait(timeout=60)
        seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=5)
    output = "".join(lines)
    print(f"{signal.Signals(signum).name}: exit {code} after {seconds:.1f} s")
    assert seconds < 30, f"exit took {seconds:.1f} s\n{output[-3000:]}"
    assert code == 128 + signum, output[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in output
    time.sleep(1)  # let the kernel reap what was terminated last
    left = _session(proc.pid)
    assert not left, f"processes left: {[(p.pid, p.cmdline()) for p in left]}"
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FAILED", [
        (r.info.run_name, r.info.status) for r in runs
    ]


def test_a_run_killed_hard_is_failed_by_the_next_run_and_shown_by_review(tmp_path):
    """A run left RUNNING by `kill -9` (owner pid gone) with a registered version: the next run of
    the candidate marks it FAILED (`fail_stale_runs`), and `review` shows the run status."""
    from beear_stage.release.review import review
    from beear_stage.release.tracking import MLflowTracker
    from flows.cli import review_text

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"\0" * 8)
    killed = MLflowTracker(uri, EXPERIMENT, artifact_location=(tmp_path / "art").as_uri())
    killed.start("cand@0", tags={"candidate": "c"})
    killed.client.set_tag(killed.run_id, "beear.pid", str(2**22 + 7))  # a pid that does not exist
    killed.register_checkpoint(
        ckpt, "m", gate_passed=True, source_repo="s", source_sha="0" * 40, method="none"
    )
    (row,) = review("m", tracking_uri=uri)
    assert row["run_status"] == "RUNNING" and row["aliases"] == ["candidate"]

    assert MLflowTracker(uri, EXPERIMENT).fail_stale_runs("cand@0", tags={"candidate": "c"}) == 1
    (row,) = review("m", tracking_uri=uri)
    assert row["run_status"] == "FAILED" and row["aliases"] == []
    text = review_text([row])
    assert "FAILED" in text.splitlines()[1] and "--- version 1 (run FAILED)" in text


def test_fail_own_runs_touches_only_this_process(tmp_path):
    from beear_stage.release.tracking import MLflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mine = MLflowTracker(uri, EXPERIMENT).start("a@0")
    other = MLflowTracker(uri, EXPERIMENT).start("b@0")
    other.client.set_tag(other.run_id, "beear.pid", str(2**22 + 7))
    assert MLflowTracker(uri, EXPERIMENT).fail_own_runs("stopped by SIGTERM") == 1
    run = mine.client.get_run(mine.run_id)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "stopped by SIGTERM"
    assert other.client.get_run(other.run_id).info.status == "RUNNING"


SWALLOWING_RUN = """
import subprocess, sys, time
import flows.shutdown as shutdown
shutdown.GRACE_S = 1.0
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
with shutdown.stop_on_signals(sys.argv[1]):
    announced = False
    while True:
        try:
            if not announced:
                announced = True
                print(child.pid, flush=True)
            time.sleep(0.1)
        except BaseException:
            pass  # a run that swallows the signal (a broad except, a call that never returns)
"""


def test_watchdog_ends_a_run_that_does_not_unwind(tmp_path):
    """The backstop: `GRACE_S` after the signal the watchdog fails the runs, stops the children
    and exits 128 + signal, even if the main thread never lets `Stopped` through."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SWALLOWING_RUN, f"sqlite:///{tmp_path / 'absent.db'}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "stderr.log").open("w"),
        text=True,
        start_new_session=True,
    )
    try:
        child = int(proc.stdout.readline())
        assert psutil.pid_exists(child)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        assert code == 128 + signal.SIGTERM, (tmp_path / "stderr.log").read_text()[-3000:]
        assert time.monotonic() - sent < 15
        time.sleep(0.5)
        assert not _session(proc.pid), "the watchdog must stop every child"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
