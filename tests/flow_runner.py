"""Run the `beear-release` flow in a child process, optionally pausing at a named point.

    python tests/flow_runner.py PARAMS.json RESULT.json [--pause POINT --marker FILE]

The crash and concurrency tests in test_hardening.py start this with PREFECT_API_URL pointing at
their test server. At a pause point the child writes `FILE` (holding the point's name) and sleeps,
so the test can SIGKILL it at a known place; nothing else about the run is changed:

    mitigation    inside the BEEAR loop (the first outer step of the mitigate task)
    checkpoint    inside save_checkpoint, after the weights were written to the temporary dir
    registration  inside register, after the model version was created, before its alias is set

RESULT.json receives {"state", "message", "flow_run_id", "result"} when the flow ends.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _pause_at(point: str, marker: Path) -> None:
    def pause(*_args, **_kwargs):
        marker.write_text(point)
        while True:  # until SIGKILL
            time.sleep(60)

    if point == "mitigation":
        from beear_stage.methods.beear import BEEAR

        BEEAR.remove = pause
    elif point == "checkpoint":
        import beear_stage.release.checkpointing as checkpointing

        save = checkpointing.save_checkpoint

        class PausingTokenizer:
            save_pretrained = staticmethod(pause)

        checkpointing.save_checkpoint = lambda model, tokenizer, out_dir, **kw: save(
            model, PausingTokenizer(), out_dir, **kw
        )
    elif point == "registration":
        from mlflow import MlflowClient

        MlflowClient.set_registered_model_alias = pause
    else:
        raise SystemExit(f"unknown pause point {point!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("params")
    parser.add_argument("result")
    parser.add_argument("--pause", default="")
    parser.add_argument("--marker", default="")
    args = parser.parse_args()
    if args.pause:
        _pause_at(args.pause, Path(args.marker))
    from flows.release import release

    state = release(**json.loads(Path(args.params).read_text()), return_state=True)
    out = {
        "state": state.name,
        "message": state.message,
        "flow_run_id": str(state.state_details.flow_run_id),
        "result": state.result() if state.is_completed() else None,
    }
    Path(args.result).write_text(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
