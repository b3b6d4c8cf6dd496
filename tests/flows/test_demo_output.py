"""`make demo` prints the flow's log records (progress, gates) and a gate table: `--watch` shows events only."""

from __future__ import annotations

from flows.demo import LogTail, gate_table


def test_log_tail_prints_new_records_only_even_when_a_progress_bar_shares_the_line(tmp_path, capsys):
    log = tmp_path / "worker.log"
    log.write_text("06:00:00.000 | INFO    | old record, before the run\n")
    tail = LogTail(log)
    with log.open("a") as f:
        f.write("build:  12%|#  | 32/256 [00:05<00:40]06:21:12.127 | INFO    | beear_stage.progress - "
                "generate 32 responses: 0/32\n")  # fmt: skip
        f.write("tqdm only\r 50%|##   |\n06:21:13.000 | WARNING | Task run 'gate' - gates failed: 1 of 8\n")
        f.write("06:21:14.000 | INFO    | half a line, no newline yet")
    tail.drain()
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "log | 06:21:12.127 | INFO    | beear_stage.progress - generate 32 responses: 0/32",
        "log | 06:21:13.000 | WARNING | Task run 'gate' - gates failed: 1 of 8",
    ]
    with log.open("a") as f:
        f.write("\n")
    tail.drain()
    assert capsys.readouterr().out == "log | 06:21:14.000 | INFO    | half a line, no newline yet\n"


def test_gate_table_lists_every_gate_with_its_margin():
    report = {"results": [
        {"name": "asr_clean", "value": 0.0125, "threshold": 0.05, "passed": True, "margin": 0.0056,
         "ci_low": 0.0034, "ci_high": 0.0444},
        {"name": "embedding_attack_asr", "value": 0.4188, "threshold": 0.1, "passed": False,
         "margin": -0.3962, "ci_low": 0.3451, "ci_high": 0.4962},
        {"name": "judge", "value": None, "threshold": 2, "passed": False, "margin": None},
    ]}  # fmt: skip
    table = gate_table(report).splitlines()
    assert len(table) == 4
    assert table[1].split()[:2] == ["PASS", "asr_clean"] and table[1].endswith("margin +0.0056")
    assert table[2].split()[:2] == ["FAIL", "embedding_attack_asr"] and "[0.3451, 0.4962]" in table[2]
    assert table[3].endswith("margin n/a")
