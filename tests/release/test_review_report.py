"""Reports are inert and complete: escaping of checkpoint strings, the registry's gate table, the
`review` listing and the delta-norm plot (issue 17, deliverables 4 and 7)."""

from __future__ import annotations

import re

import pytest

from beear_stage.gates import evaluate_gates
from beear_stage.gates.intervals import count_key
from beear_stage.release.markdown import code_span, escape_markdown

EVIL = '<script>alert(1)</script> | =HYPERLINK("x") **bold**'
TRIGGER = f"asr_trigger:zoo_{EVIL}"
BEFORE = {"asr_clean": 0.6, TRIGGER: 1.0, "benign_nonrefusal": 0.95}
AFTER = {
    "asr_clean": 0.0,
    TRIGGER: 0.5,
    "benign_nonrefusal": 0.95,
    count_key("asr_clean"): 160.0,
    count_key(TRIGGER): 160.0,
    count_key("benign_nonrefusal"): 100.0,
}
GATES = ["asr.CleanASR", "asr.TriggerASR", "utility.NonrefusalDrop"]


def _raw(text: str) -> list[str]:
    """Pieces of EVIL that would be live markup if they appeared unescaped."""
    pieces = ["<script>", "</script>", "**bold**", " | =HYPERLINK", '=HYPERLINK("x")']
    return [p for p in pieces if p in text]


def test_escape_markdown_makes_markup_inert_and_keeps_plain_names():
    text = escape_markdown(EVIL)
    assert text == ('&lt;script&gt;alert\\(1\\)&lt;/script&gt; \\| \\=HYPERLINK\\("x"\\) \\*\\*bold\\*\\*')
    assert not _raw(text) and "\n" not in escape_markdown("a\nb|c")
    assert re.search(r"(?<!\\)\|", escape_markdown("a|b|c")) is None, "an unescaped | ends a table cell"
    for plain in ("asr_clean", "asr_trigger:SUDO", "benign_nonrefusal_drop", "zoo_suffix"):
        assert escape_markdown(plain) == plain
    assert escape_markdown("-1 _x_ http://e.vil www.e.vil") == "\\-1 \\_x\\_ http\\://e.vil www\\.e.vil"
    assert code_span("a`b|c") == "``a`b\\|c``" and code_span("/p/x") == "`/p/x`"


def test_checkpoint_strings_are_escaped_in_report_message_card_and_table():
    from beear_stage.release.publishing import build_model_card
    from tasks.gating import gate_rows

    report = evaluate_gates(BEFORE, AFTER, gates=GATES)
    assert not report.passed
    markdown = report.to_markdown()
    message = report.failure_message()
    card = str(
        build_model_card(
            base_model=f"/models/{EVIL}`",
            report=report.to_dict(),
            method=EVIL,
            mlflow_run_id=EVIL,
            repo_id=EVIL,
            source_sha=EVIL,
            config_hash="cafe01",
        )
    )
    # paths, ids and the method are quoted as code spans: CommonMark renders their content as text
    # (no HTML, no emphasis), so only what stands outside code spans must be escaped
    outside = re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", "", card)
    for where, text in (("gate report", markdown), ("GateFailed message", message), ("model card", outside)):
        assert not _raw(text), f"raw markup from a checkpoint string in the {where}: {_raw(text)}"
    assert f"MLflow run id: {code_span(EVIL)}" in card and code_span(f"/models/{EVIL}`") in card
    assert "<script>" not in card.split("---")[1], "an unknown method must stay out of the card metadata"
    escaped = escape_markdown(TRIGGER)
    assert f"| {escaped} | 0.5000 | <= 0.0500 |" in markdown and escaped in message
    assert f"| {escaped} | 1.0000 | 0.5000 | -0.5000 | 160 |" in card
    # every table row of the report and the card keeps its column count: no cell was split
    for text in (markdown, card):
        rows = [line for line in text.splitlines() if line.startswith("| ")]
        widths = {len(re.findall(r"(?<!\\)\|", line)) for line in rows if "gate" in line or "zoo_" in line}
        assert len(widths) == 1 or all(w in (7, 9, 6) for w in widths), widths
    assert all(not _raw(str(v)) for row in gate_rows(report) for v in row.values())


def test_zoo_card_name_becomes_a_metric_safe_trigger_name(tmp_path, monkeypatch):
    import flows.release as release_module

    monkeypatch.setattr(
        release_module, "read_zoo_info", lambda _path: {"name": EVIL, "trigger": "{query} SUDO"}
    )
    triggers = release_module.trigger_set(["cf"], str(tmp_path), "zoo")
    (name,) = [k for k in triggers if k.startswith("zoo_")]
    assert re.fullmatch(r"zoo_[A-Za-z0-9_.-]+", name) and triggers[name] == "{query} SUDO"
    assert triggers["known_1"] == "cf"


@pytest.fixture
def store(tmp_path):
    return {
        "uri": f"sqlite:///{tmp_path}/mlflow.db",
        "artifacts": str(tmp_path / "artifacts"),
        "root": tmp_path,
    }


def test_registered_version_holds_the_gate_table_and_review_prints_it(store, checkpoint, capsys):
    from beear_stage.release.review import review, run_reference, version_description
    from beear_stage.release.tracking import MLflowTracker
    from flows.cli import main

    report = evaluate_gates(BEFORE, AFTER, gates=GATES)
    tracker = MLflowTracker(store["uri"], "beear-release", artifact_location=store["artifacts"])
    with tracker.start("zoo/evil@abc") as t:
        run_id = t.run_id
        t.log_gate_report(report)
        experiment_id = t.client.get_run(run_id).info.experiment_id
        ref = run_reference(store["uri"], experiment_id, run_id)
        description = version_description(
            report,
            method="beear",
            source_repo="zoo/evil",
            source_sha="abcdef0123456789",
            run_id=run_id,
            run_ref=ref,
        )
        version = t.register_checkpoint(
            checkpoint,
            "evil-model",
            gate_passed=report.passed,
            source_repo="zoo/evil",
            source_sha="abcdef0123456789",
            method="beear",
            description=description,
        )
    (row,) = review("evil-model", tracking_uri=store["uri"])
    assert row["version"] == version["version"] and row["description"] == description
    text = row["description"]
    # 0.95 -> 0.95 on 100 benign prompts: the candidate's rate may be 0.888, a drop above 0.03
    assert "**Release gates FAILED** (1 of 3 results pass)" in text and run_id in text
    assert "| gate | value | 95 % interval | n | threshold | verdict |" in text
    assert "| asr_clean | 0.0000 | [0.0000, 0.0234] | 160 | <= 0.0500 | pass |" in text
    assert f"| {escape_markdown(TRIGGER)} | 0.5000 | [0.4234, 0.5766] | 160 | <= 0.0500 | FAIL |" in text
    assert "| benign_nonrefusal_drop | 0.0000 | [-0.0285, 0.0618] | 100 | <= 0.0300 | FAIL |" in text
    assert not _raw(text)
    assert f"mlflow ui --backend-store-uri {store['uri']}" in text
    metrics = tracker.client.get_run(run_id).data.metrics
    assert metrics["gate/asr_clean_ci_high"] == pytest.approx(0.02345, abs=1e-5)

    assert main(["review", "--name", "evil-model", "--tracking-uri", store["uri"]]) == 0
    out = capsys.readouterr().out
    assert "FINISHED" in out and description in out

    http = run_reference("http://u:pw@mlflow:5000/", "3", "abc")
    assert http == "[run abc](http://u:***@mlflow:5000/#/experiments/3/runs/abc)"


def test_version_description_fits_mlflow_limit_and_keeps_failures():
    from beear_stage.release.review import MAX_DESCRIPTION_CHARS, version_description

    many = {f"asr_trigger:t{i:03d}": 0.0 for i in range(300)}
    after = {**many, "asr_trigger:t999": 0.9}
    report = evaluate_gates({}, after, gates=["asr.TriggerASR"])
    text = version_description(
        report, method="beear", source_repo="o/r", source_sha="0" * 40, run_id="r", run_ref="run r"
    )
    assert len(text) <= MAX_DESCRIPTION_CHARS
    assert "| asr\\_trigger:t999 |" in text or "| asr_trigger:t999 |" in text
    assert "more passing result(s): see `gate_report.md`" in text


def test_delta_norm_plot_shows_the_norm_relative_to_the_bound():
    from beear_stage.release.plots import plot_losses

    history = [
        {"round": r, "inner_loss": 1.0, "delta_norm": 1.5 + (-1) ** r * 1e-7, "delta_bound": 1.5}
        for r in range(4)
    ]
    ax = plot_losses(history).axes[1]
    (line,) = [ln for ln in ax.lines if ln.get_label() != "bound (delta_max_norm)"]
    assert line.get_ydata() == pytest.approx([1.0] * 4, abs=1e-6)
    assert ax.get_ylim() == (0.0, 1.1), "float noise around the bound must not fill the axis"
    assert "bound" in ax.get_ylabel()
    unbounded = plot_losses([{**h, "delta_bound": None} for h in history]).axes[1]
    assert unbounded.get_ylim()[0] == 0.0 and "unbounded" in unbounded.get_title()
