"""results.jsonl / errors.jsonl: durability, torn-line repair, resume bookkeeping."""

from __future__ import annotations

import json

import pytest

from huatuo_cli.answering.record import SCHEMA, Answer, build_record
from huatuo_cli.batch.results import ERRORS_NAME, RESULTS_NAME, BatchState, read_jsonl
from huatuo_cli.errors import HuatuoError


def record(study: str, question: str) -> dict:
    return build_record(study=study, question=question, answer=Answer(text=f"{study}/{question}"), model=None,
                        inputs=["0" * 64], window=None)


def test_results_roundtrip_and_pending(tmp_path):
    state = BatchState.open(tmp_path / "out")
    state.add_result(record("s1", "q1"))
    state.add_result(record("s1", "q2"))
    again = BatchState.open(tmp_path / "out")
    assert again.done == {("s1", "q1"), ("s1", "q2")}
    assert again.pending("s1", ["q1", "q2", "q3"]) == ["q3"]
    assert again.pending("s2", ["q1"]) == ["q1"]
    assert all(r["schema"] == SCHEMA for r in again.results)
    with pytest.raises(ValueError):
        again.add_result(record("s1", "q1"))


@pytest.mark.parametrize("tail", [b'{"schema": "huatuo.result/1", "stu', b"\0" * 512, b'{"a": 1}'])
def test_torn_last_line_is_dropped_and_truncated(tmp_path, tail):
    state = BatchState.open(tmp_path)
    state.add_result(record("s1", "q1"))
    good = (tmp_path / RESULTS_NAME).read_bytes()
    with open(tmp_path / RESULTS_NAME, "ab") as handle:
        handle.write(tail)  # no newline: the write was cut short
    again = BatchState.open(tmp_path)
    assert again.done == {("s1", "q1")}
    assert (tmp_path / RESULTS_NAME).read_bytes() == good
    again.add_result(record("s2", "q1"))
    assert [r["study"] for r in read_jsonl(tmp_path / RESULTS_NAME)] == ["s1", "s2"]


def test_damage_in_the_middle_is_refused(tmp_path):
    lines = [json.dumps(record("s1", "q1")), "garbage", json.dumps(record("s2", "q1"))]
    (tmp_path / RESULTS_NAME).write_text("\n".join(lines) + "\n")
    with pytest.raises(HuatuoError, match="line 2"):
        BatchState.open(tmp_path)


def test_foreign_schema_is_refused(tmp_path):
    (tmp_path / RESULTS_NAME).write_text(json.dumps({"schema": "other/9", "study": "s", "question": "q"}) + "\n")
    with pytest.raises(HuatuoError, match="schema"):
        BatchState.open(tmp_path)


def test_errors_are_recorded_once_and_superseded_by_a_later_answer(tmp_path):
    state = BatchState.open(tmp_path)
    assert state.add_error(kind="file", key="a/b", reason="not DICOM")
    assert not state.add_error(kind="file", key="a/b", reason="not DICOM")
    state.add_error(kind="study", key="s1", question="q1", reason="context full")
    state = BatchState.open(tmp_path)
    assert len(state.open_errors()) == 2
    state.add_result(record("s1", "q1"))
    assert [e["key"] for e in state.open_errors()] == ["a/b"]
    assert len((tmp_path / ERRORS_NAME).read_text().splitlines()) == 2
