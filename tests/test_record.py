"""The result record has one definition (record.ResultRecord): `run`'s JSONL and the HTTP API both use it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fakes import sensible
from fakeserver import FakeServer
from mailcascade.record import ResultRecord, record_dict, record_line
from mailcascade.types import Attempt, Draft, Hit, Result, RouteDecision, StageRecord
from service import api_email, mc, sample_emails


def test_a_record_round_trips_and_leaves_out_empty_errors() -> None:
    attempt = Attempt(number=1, raw="{}", finish_reason="stop", status="clean", findings=(), tokens_in=5,
                      tokens_out=2, latency_ms=10.04, http_attempts=2)
    ok = Result(id="a", status="ok", source="x.jsonl:1", route=RouteDecision("orders", 0.9, "r"),
                hits=(Hit("P1", "P1#0", 0.12345678, "text"),), draft=Draft("Hello", ("P1",)),
                stages=(StageRecord(stage="route", status="ok", prompt_hash="h", model="m", attempts=(attempt,),
                                    latency_ms=10.04),))
    data = record_dict(ok)
    assert "error" not in data and "error" not in data["stages"][0] and "error_code" not in data["stages"][0]
    assert data["hits"][0]["score"] == 0.123457 and data["draft"] == "Hello" and data["cited_product_ids"] == ["P1"]
    assert data["stages"][0] == {
        "stage": "route", "status": "ok", "prompt_hash": "h", "model": "m", "attempts": 1, "http_attempts": 2,
        "failure_codes": [], "validator_status": "clean", "tokens_in": 5, "tokens_out": 2, "latency_ms": 10.0,
        "queue_ms": 0.0, "input_hash": ""}
    assert ResultRecord.model_validate_json(record_line(ok)).model_dump(mode="json") == data

    failed = Result(id="b", status="failed", error="route: no answer", stages=(
        StageRecord(stage="route", status="error", error="timed out", error_code="transport_timeout",
                    lost_http_attempts=3),))
    data = record_dict(failed)
    assert data["error"] == "route: no answer" and data["department"] is None and data["draft"] is None
    assert data["stages"][0]["error_code"] == "transport_timeout" and data["stages"][0]["http_attempts"] == 3
    assert data["stages"][0]["failure_codes"] == ["transport_timeout"]


@pytest.mark.slow  # builds the sample index with the real embedding model
def test_records_written_by_run_validate_against_the_api_model(tmp_path: Path) -> None:
    emails = sample_emails(3)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(api_email(e)) + "\n" for e in emails))
    with FakeServer(sensible) as server:  # type: ignore[arg-type]
        env = {"MAILCASCADE_CATALOG__INDEX_DIR": str(tmp_path / "index"), "OPENAI_BASE_URL": server.base_url,
               "MAILCASCADE_STORE__PATH": str(tmp_path / "store.db")}
        done = mc("run", "in.jsonl", "--out", "out.jsonl", "--no-progress", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    for line, email in zip(lines, emails, strict=True):
        data = json.loads(line)
        record = ResultRecord.model_validate(data)  # extra="forbid": every field is one the API documents
        assert record.id == email["id"] and record.hits and record.draft
        assert record.model_dump(mode="json") == data  # and nothing is reshaped on the way
