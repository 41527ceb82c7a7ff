"""`eval anomaly` on the real labelled data sets: the detector against two simple baselines scored in
the same run on the same units, and the input formats it reads (and refuses)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from receiver.eval import anomaly

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "anomaly"
HDFS = DATA / "HDFS_100k"
BGL = DATA / "BGL_half1" / "BGL_half1.log"
LOGLEAD = DATA / "HDFS_loglead_2pct"


def test_datasets_present() -> None:
    assert (HDFS / "block_sessions.jsonl").is_file(), f"missing {HDFS}"
    assert BGL.is_file(), f"missing {BGL}"
    assert (LOGLEAD / "anomaly_label.csv").is_file(), f"missing {LOGLEAD}"


def _above_baselines(res: dict) -> None:
    b = res["baselines"]
    for name in ("severity_error", "severity_warn", "novel_after_warmup"):
        assert res["f1"] > b[name]["f1"], (name, res["f1"], b[name])


def test_hdfs_sessions_unsupervised(capsys: pytest.CaptureFixture[str]) -> None:
    assert anomaly.main(["--data", str(HDFS), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) >= {"precision", "recall", "f1", "items", "baselines"}
    assert res["items"] == 1588 and res["train_items"] == 6352 and res["positives"] == 57
    assert res["f1"] <= res["f1_ceiling"] + 1e-9
    # template-only sessions carry no severity: baseline (a) flags nothing there
    assert res["baselines"]["severity_error"]["tp"] + res["baselines"]["severity_error"]["fp"] == 0
    _above_baselines(res)


def test_bgl_windows_no_labels_for_learning() -> None:
    res = anomaly.evaluate(BGL)
    assert res["items"] == 160 and res["lines"] == 1000 and res["unparsed_lines"] == 0
    assert res["positives"] == 14  # windows holding at least one alert line
    # every alert line is FATAL, so the severity rule finds them all; it pays in false alarms
    assert res["baselines"]["severity_error"]["recall"] == 1.0
    _above_baselines(res)


BLOCK_ID = r"blk_-?\d+"  # the labelled id in HDFS lines


def test_raw_log_with_label_csv_as_entity_sessions() -> None:
    with pytest.raises(ValueError, match="--session-regex"):
        anomaly.evaluate(LOGLEAD)  # the id to group by is the user's to name
    res = anomaly.evaluate(LOGLEAD, session_regex=BLOCK_ID)
    assert res["mode"] == "raw-sessions"
    assert res["items"] == 11501 and res["positives"] == 350 and res["lines"] == 222579
    assert res["unparsed_lines"] == 0 and res["labelled_ids_not_in_log"] == 0
    _above_baselines(res)


def test_text_output_table_and_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert anomaly.run([str(BGL), str(HDFS)], as_json=False) == 0
    out = capsys.readouterr().out
    assert "(a) has ERROR/FATAL" in out and "(b) novel after warm-up" in out and "dataset (F1)" in out
    assert anomaly.run(str(tmp_path / "missing"), as_json=True) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "block_sessions.jsonl").write_text('{"BlockId": "b", "split": "train"}\n')
    assert anomaly.run(str(tmp_path), as_json=True) == 2
    assert "bad record" in capsys.readouterr().err
    # a raw log that is not label-first: refused with the formats named, never a silent F1 of 0
    raw = tmp_path / "plain.log"
    raw.write_text("081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 terminating\n" * 5)
    assert anomaly.run(str(raw), as_json=True) == 2
    err = capsys.readouterr().err
    assert "not in a format" in err and "anomaly_label.csv" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert anomaly.run(str(empty), as_json=True) == 2
    assert "block_sessions.jsonl" in capsys.readouterr().err


def test_llm_hook_can_override_verdicts() -> None:
    class VetoAll:
        def review(self, assessments: list[anomaly.Assessment]) -> list[bool]:
            return [False for _ in assessments]

    res = anomaly.evaluate(BGL, llm=VetoAll())
    assert res["tp"] == 0 and res["fp"] == 0 and res["fn"] == 14


def test_llm_argument_resolution(capsys: pytest.CaptureFixture[str]) -> None:
    assert anomaly.resolve_llm(None) is None and anomaly.resolve_llm("off") is None
    assert anomaly.run(str(BGL), as_json=True, llm="off") == 0
    assert json.loads(capsys.readouterr().out)["tp"] >= 1

    class Reviewer:
        def review(self, assessments: list[anomaly.Assessment]) -> list[bool]:
            return [a.flagged for a in assessments]

        def report(self) -> dict[str, int]:
            return {"calls": 0}

    res = anomaly.evaluate(BGL, llm=Reviewer())
    assert res["llm"] == {"calls": 0} and res["tp"] >= 1


def test_otlp_replay_through_the_product_matches_the_in_process_eval(tmp_path: Path) -> None:
    # HDFS_5k.log with the block labels: the same lines sent to the running app over OTLP/HTTP give the
    # same verdict per block as the evaluation's own windows and detector
    src = DATA / "HDFS_100k"
    (tmp_path / "HDFS_5k.log").symlink_to(src / "HDFS_5k.log")
    (tmp_path / "anomaly_label.csv").symlink_to(src / "anomaly_label.csv")
    inproc = anomaly.evaluate(tmp_path, session_regex=BLOCK_ID)
    over = anomaly.evaluate_otlp(tmp_path, session_regex=BLOCK_ID)
    assert inproc["items"] == over["items"] == 110 and over["lines"] == 4519
    assert (over["tp"], over["fp"], over["fn"]) == (inproc["tp"], inproc["fp"], inproc["fn"])
    assert over["tp"] > 0
    with pytest.raises(ValueError, match="--otlp replays"):
        anomaly.evaluate_otlp(BGL, session_regex=BLOCK_ID)
