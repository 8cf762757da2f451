"""`mailcascade serve` as a user runs it: a real uvicorn process on loopback, over the fake model server.

Routing is by the (fake) LLM and the default stages are route only, so these tests load no embedding model; the
ones that do (eval of an exported set), or start several processes, are marked slow.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fakes import keyword_department, sensible
from fakeserver import FakeServer
from mailcascade.record import ResultRecord
from mailcascade.serve.models import BatchOut
from service import Gate, Service, api_email, mc, sample_emails


@pytest.fixture
def model() -> Iterator[FakeServer]:
    with FakeServer(sensible) as server:  # type: ignore[arg-type]
        yield server


def env_for(tmp: Path, server: FakeServer, **extra: str) -> dict[str, str]:
    env = {"OPENAI_BASE_URL": server.base_url, "MAILCASCADE_LLM__MODEL": "fake-model",
           "MAILCASCADE_STORE__PATH": str(tmp / "store.db"), "MAILCASCADE_SERVE__STAGES": "route",
           "MAILCASCADE_LLM__BACKOFF_INITIAL_S": "0.01", "MAILCASCADE_LLM__BACKOFF_MAX_S": "0.05",
           "MAILCASCADE_LLM__TIMEOUT_S": "130"}
    env.update({f"MAILCASCADE_SERVE__{k.upper()}" if not k.startswith("MAILCASCADE_") else k: v
                for k, v in extra.items()})
    return env


def route_requests_per_token(server: FakeServer) -> Counter[str]:
    """How many route requests the model got per email id (each test email's subject carries its id)."""
    counts: Counter[str] = Counter()
    for body in server.bodies:
        text = next(m["content"] for m in body["messages"] if m["role"] == "user")
        for token in set(t.strip(".,:;[]()") for t in text.split()):
            if token.startswith("ID-"):
                counts[token[3:]] += 1
    return counts


def tagged(emails: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**e, "subject": f"{e['subject']} ID-{e['id']}"} for e in emails]


# ------------------------------------------------------------------ endpoints and shapes

def test_endpoints_answer_in_the_documented_shapes(tmp_path: Path, model: FakeServer) -> None:
    emails = sample_emails(6)
    with Service(tmp_path, env_for(tmp_path, model)) as service, service.client() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["model"]["ok"] is True

        one = http.post("/v1/emails", json=api_email(emails[0]))
        assert one.status_code == 200, one.text
        record = ResultRecord.model_validate(one.json())  # extra="forbid": no field the model does not define
        assert record.id == "m0000" and record.status == "ok" and record.source == "api"
        assert record.department == keyword_department(f"{emails[0]['subject']} {emails[0]['body']}")
        assert [s.stage for s in record.stages] == ["route", "retrieve"]  # serve.stages = route: retrieve skipped
        assert record.stages[0].model == "fake-model" and record.stages[0].tokens_in > 0
        assert "error" not in one.json() and "error" not in one.json()["stages"][0]

        accepted = http.post("/v1/batches", json={"emails": [api_email(e) for e in emails]})
        assert accepted.status_code == 202 and set(accepted.json()) == {"id", "status"}
        assert accepted.json()["status"] == "queued"
        batch = wait_done(http, accepted.json()["id"])
        assert [r.id for r in batch.results] == [e["id"] for e in emails]
        assert all(r.status == "ok" and r.source.startswith("batch:") for r in batch.results)

        fb = http.post("/v1/emails/m0000/feedback", json={"department": "billing", "sent_reply": "Hi", "outcome":
                                                          "rerouted"})
        assert fb.status_code == 201 and fb.json()["email_id"] == "m0000"
        missing = http.post("/v1/emails/nope/feedback", json={"department": "billing", "sent_reply": "",
                                                              "outcome": "discarded"})
        assert missing.status_code == 404 and "nope" in missing.json()["error"]
        bad = http.post("/v1/emails/m0000/feedback", json={"department": "billing", "sent_reply": "",
                                                           "outcome": "ignored"})
        assert bad.status_code == 422 and bad.json()["error"].startswith("body.outcome:")
        assert http.get("/v1/batches/unknown").status_code == 404

        metrics = http.get("/metrics").text
        assert 'mailcascade_emails_total{status="ok",via="api"} 1.0' in metrics
        assert f'mailcascade_emails_total{{status="ok",via="batch"}} {len(emails)}.0' in metrics
        assert 'mailcascade_stage_latency_seconds_count{stage="route"} 7.0' in metrics
        assert 'mailcascade_tokens_total{direction="in",stage="route"}' in metrics
        assert 'mailcascade_in_flight{via="api"} 0.0' in metrics
        assert 'mailcascade_feedback_total{outcome="rerouted"} 1.0' in metrics


def wait_done(http: httpx.Client, batch_id: str) -> BatchOut:
    while True:
        batch = BatchOut.model_validate(http.get(f"/v1/batches/{batch_id}").json())
        if batch.status == "done":
            return batch


def test_user_errors_are_one_line(tmp_path: Path, model: FakeServer) -> None:
    with Service(tmp_path, env_for(tmp_path, model)) as service, service.client() as http:
        cases = [
            (http.post("/v1/emails?stages=route,bogus", json={"id": "a", "subject": "x"}), "stages: unknown bogus"),
            (http.post("/v1/emails", json={"id": "a", "subjet": "x"}), "body.subjet: Extra inputs"),
            (http.post("/v1/emails", json={"id": "a", "subject": "", "body": " "}), "email a: empty email"),
            (http.post("/v1/emails", content=b"{not json", headers={"content-type": "application/json"}),
             "body."),
            (http.post("/v1/batches", json={"emails": []}), "body.emails: List should have at least 1 item"),
        ]
        for response, needle in cases:
            assert response.status_code == 422, response.text
            message = response.json()["error"]
            assert needle in message and "\n" not in message, message


def test_the_openapi_document_lists_every_endpoint_with_its_schemas(tmp_path: Path, model: FakeServer) -> None:
    with Service(tmp_path, env_for(tmp_path, model)) as service, service.client() as http:
        doc = http.get("/openapi.json").json()
    paths = doc["paths"]
    assert set(paths) == {"/healthz", "/readyz", "/metrics", "/v1/emails", "/v1/batches", "/v1/batches/{batch_id}",
                          "/v1/emails/{email_id}/feedback"}

    def ref(op: dict[str, Any], code: str) -> str:
        return str(op["responses"][code]["content"]["application/json"]["schema"]["$ref"]).rsplit("/", 1)[-1]

    assert ref(paths["/v1/emails"]["post"], "200") == "ResultRecord"
    assert paths["/v1/emails"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/EmailIn")
    assert ref(paths["/v1/batches"]["post"], "202") == "BatchAccepted"
    assert ref(paths["/v1/batches/{batch_id}"]["get"], "200") == "BatchOut"
    assert ref(paths["/v1/emails/{email_id}/feedback"]["post"], "201") == "FeedbackOut"
    assert ref(paths["/v1/emails"]["post"], "503") == "ErrorOut"
    schemas = doc["components"]["schemas"]
    # the served schema is the record model's own: the JSONL that `run` writes has this shape too
    assert set(schemas["ResultRecord"]["properties"]) == set(ResultRecord.model_json_schema()["properties"])
    assert set(schemas["FeedbackIn"]["properties"]["outcome"]["enum"]) == {
        "sent_as_is", "edited", "rewritten", "rerouted", "discarded"}
    assert "bearer" in json.dumps(doc["components"].get("securitySchemes", {})).lower()


# ------------------------------------------------------------------ keys, limits, back-pressure

def test_api_keys_401_without_a_valid_one(tmp_path: Path, model: FakeServer) -> None:
    env = env_for(tmp_path, model, api_keys="first-key,second-key")
    with Service(tmp_path, env) as service:
        email = {"id": "k1", "subject": "refund"}
        with service.client() as anonymous:
            assert anonymous.get("/healthz").status_code == 200  # probes need no key
            no_key = anonymous.post("/v1/emails", json=email)
            assert no_key.status_code == 401 and no_key.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer" in no_key.json()["error"]
            assert anonymous.get("/metrics").status_code == 401
            assert anonymous.get("/v1/batches/x").status_code == 401
        with service.client("first-key-but-longer") as wrong:
            assert wrong.post("/v1/emails", json=email).status_code == 401
        with service.client("second-key") as right:
            assert right.post("/v1/emails", json=email).status_code == 200
            assert right.get("/metrics").status_code == 200
    assert "no API keys" not in service.stderr


def test_no_key_binds_loopback_only_with_a_warning(tmp_path: Path, model: FakeServer) -> None:
    with Service(tmp_path, env_for(tmp_path, model), "--host", "0.0.0.0") as service, service.client() as http:
        assert http.post("/v1/emails", json={"id": "a", "subject": "refund"}).status_code == 200
    warning = [line for line in service.stderr.splitlines() if "no API keys" in line]
    assert len(warning) == 1 and "binding 127.0.0.1 instead of 0.0.0.0" in warning[0]
    assert "serving on http://127.0.0.1:" in service.stderr


def test_request_size_limit_413(tmp_path: Path, model: FakeServer) -> None:
    env = env_for(tmp_path, model, max_request_bytes="2000")
    with Service(tmp_path, env) as service, service.client() as http:
        big = {"id": "b", "subject": "refund", "body": "x" * 3000}
        refused = http.post("/v1/emails", json=big)
        assert refused.status_code == 413 and "serve.max_request_bytes" in refused.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
            yield json.dumps(big).encode()

        streamed = http.post("/v1/emails", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert http.post("/v1/emails", json={**big, "body": "x" * 100}).status_code == 200
    assert model.bodies and len(model.bodies) == 1  # the refused ones never reached the model


def test_work_in_flight_is_bounded_503_with_retry_after(tmp_path: Path) -> None:
    gate = Gate(open_first=0)
    with FakeServer(gate) as server:  # type: ignore[arg-type]
        env = env_for(tmp_path, server, max_in_flight="2", retry_after_s="3", max_queued_emails="3")
        with Service(tmp_path, env) as service, service.client() as http:
            answers: list[httpx.Response] = []
            workers = [threading.Thread(target=lambda n=n: answers.append(  # type: ignore[misc]
                http.post("/v1/emails", json={"id": f"w{n}", "subject": f"refund ID-w{n}"}))) for n in range(2)]
            for w in workers:
                w.start()
            gate.wait_arrived(2)  # two emails in flight, held by the model
            busy = http.post("/v1/emails", json={"id": "w9", "subject": "refund"})
            assert busy.status_code == 503 and busy.headers["retry-after"] == "3"
            assert "serve.max_in_flight" in busy.json()["error"]
            too_many = http.post("/v1/batches", json={"emails": [{"id": f"q{n}", "subject": "x"} for n in range(4)]})
            assert too_many.status_code == 503 and too_many.headers["retry-after"] == "3"
            gate.release()
            for w in workers:
                w.join()
            metrics = http.get("/metrics").text
        assert sorted(r.status_code for r in answers) == [200, 200]  # nothing accepted was dropped
        assert {r.json()["id"] for r in answers} == {"w0", "w1"}
        assert len(server.bodies) == 2  # the refused email never reached the model
        assert 'mailcascade_rejected_total{endpoint="emails"} 1.0' in metrics


def test_concurrent_requests_run_concurrently_and_each_gets_its_own_result(tmp_path: Path) -> None:
    gate = Gate(open_first=0)
    with FakeServer(gate) as server:  # type: ignore[arg-type]
        with Service(tmp_path, env_for(tmp_path, server)) as service, service.client() as http:
            emails = tagged(sample_emails(16, prefix="c"))
            answers: dict[str, httpx.Response] = {}

            def send(email: dict[str, Any]) -> None:
                answers[email["id"]] = http.post("/v1/emails", json=api_email(email))

            workers = [threading.Thread(target=send, args=(e,)) for e in emails]
            for w in workers:
                w.start()
            gate.wait_arrived(16)  # all 16 are inside the model at once: none waits for another
            gate.release()
            for w in workers:
                w.join()
        assert server.max_in_flight == 16
        for email in emails:
            record = ResultRecord.model_validate(answers[email["id"]].json())
            assert record.id == email["id"]
            assert record.department == keyword_department(f"{email['subject']} {email['body']}")
        assert route_requests_per_token(server) == Counter({e["id"]: 1 for e in emails})


# ------------------------------------------------------------------ SIGTERM drains, SIGKILL loses nothing

@pytest.mark.slow  # two server starts, or several mailcascade commands
def test_sigterm_drains_work_in_flight_and_keeps_the_queue(tmp_path: Path) -> None:
    gate = Gate(open_first=0)
    with FakeServer(gate) as server:  # type: ignore[arg-type]
        env = env_for(tmp_path, server, batch_concurrency="1")
        service = Service(tmp_path, env).start()
        try:
            with service.client() as http:
                emails = tagged(sample_emails(3, prefix="t"))
                batch_id = http.post("/v1/batches", json={"emails": [api_email(e) for e in emails]}).json()["id"]
                gate.wait_arrived(1)  # the worker holds t0000
                answer: list[httpx.Response] = []
                request = threading.Thread(target=lambda: answer.append(
                    http.post("/v1/emails", json={"id": "live", "subject": "refund ID-live"})))
                request.start()
                gate.wait_arrived(2)  # and a request is in flight
                service.signal(signal.SIGTERM)
                gate.release()
                request.join()
                code, err = service.wait()
        finally:
            service.stop()
        assert answer[0].status_code == 200 and answer[0].json()["id"] == "live"  # drained, not cut
        assert code in (0, 143) and "Traceback" not in err, err
        with sqlite3.connect(tmp_path / "store.db") as db:
            states = dict(db.execute("SELECT email_id, state FROM batch_emails ORDER BY position").fetchall())
        assert states == {"t0000": "done", "t0001": "queued", "t0002": "queued"}  # finished what it held

        with Service(tmp_path, env) as again, again.client() as http:
            batch = wait_done(http, batch_id)
        assert [r.id for r in batch.results] == [e["id"] for e in emails]
        assert route_requests_per_token(server) == Counter({"t0000": 1, "t0001": 1, "t0002": 1, "live": 1})


@pytest.mark.slow  # two server starts, or several mailcascade commands
def test_sigkill_mid_batch_then_restart_processes_every_email_exactly_once(tmp_path: Path) -> None:
    gate = Gate(open_first=15)
    with FakeServer(gate) as server:  # type: ignore[arg-type]
        env = env_for(tmp_path, server, batch_concurrency="4")
        emails = tagged(sample_emails(43, prefix="r"))  # the project's own sample of real-looking customer email
        service = Service(tmp_path, env).start()
        try:
            with service.client() as http:
                batch_id = http.post("/v1/batches", json={"emails": [api_email(e) for e in emails]}).json()["id"]
                gate.wait_arrived(19)  # 15 answered, 4 claimed and held inside the model
                while done_count(tmp_path / "store.db") < 15:
                    pass
                service.signal(signal.SIGKILL)
                code, _ = service.wait()
        finally:
            service.stop()
        assert code == -signal.SIGKILL
        with sqlite3.connect(tmp_path / "store.db") as db:
            before = Counter(state for (state,) in db.execute("SELECT state FROM batch_emails"))
        assert before == Counter({"done": 15, "running": 4, "queued": 24})
        gate.release()  # the dead server's held requests end; the new server's are answered at once

        with Service(tmp_path, env) as again, again.client() as http:
            batch = wait_done(http, batch_id)
            assert "queued again" in again.stderr
        ids = [r.id for r in batch.results]
        assert ids == [e["id"] for e in emails] and len(set(ids)) == 43  # nothing lost, nothing doubled
        assert all(r.status == "ok" for r in batch.results)
        with sqlite3.connect(tmp_path / "store.db") as db:
            rows = db.execute("SELECT state, claims, result FROM batch_emails").fetchall()
        assert all(state == "done" and result for state, _, result in rows)
        claimed_twice = sum(claims == 2 for _, claims, _ in rows)
        assert claimed_twice == before["running"] and max(claims for _, claims, _ in rows) <= 2
        # the model saw each email once, except the ones the killed server held (sent again after the restart)
        asked = route_requests_per_token(server)
        assert set(asked) == {e["id"] for e in emails}
        assert sorted(n for n in asked.values() if n > 1) == [2, 2, 2, 2]


def done_count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM batch_emails WHERE state='done'").fetchone()[0])


# ------------------------------------------------------------------ feedback -> statistics -> eval set

def post_feedback(http: httpx.Client, emails: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Answer each email, then send feedback as an agent would; returns what was sent and what the system said."""
    outcomes = ["sent_as_is", "edited", "rerouted", "discarded"]
    sent = []
    for n, email in enumerate(emails):
        record = http.post("/v1/emails", json=api_email(email)).json()
        outcome = outcomes[n % len(outcomes)]
        department = email["_expected"].get("department") or "general"
        if outcome == "rerouted" and department == record["department"]:
            department = "general" if department != "general" else "orders"
        reply = {"sent_as_is": "Thanks!", "edited": "Thanks a lot!", "rerouted": "Moved to another desk.",
                 "discarded": ""}[outcome]
        item = {"department": department, "sent_reply": reply, "outcome": outcome}
        assert http.post(f"/v1/emails/{email['id']}/feedback", json=item).status_code == 201
        sent.append({**item, "system": record["department"], "prompt_hash": record["stages"][0]["prompt_hash"]})
    return sent


@pytest.mark.slow  # two server starts, or several mailcascade commands
def test_feedback_statistics_and_export_say_when_bodies_were_not_stored(tmp_path: Path, model: FakeServer) -> None:
    emails = sample_emails(8, prefix="f")
    with Service(tmp_path, env_for(tmp_path, model)) as service, service.client() as http:
        sent = post_feedback(http, emails)
    db = tmp_path / "store.db"
    stats = mc("feedback", "--json", "--db", str(db), cwd=tmp_path)
    assert stats.returncode == 0, stats.stderr
    data = json.loads(stats.stdout)
    assert data["emails"] == 8
    (route,) = data["route"]
    assert route["prompt_hash"] == sent[0]["prompt_hash"] and route["model"] == "fake-model"
    moved = sum(s["department"] != s["system"] for s in sent)
    assert route["reroute_rate"] == pytest.approx(moved / 8)
    for s in sent:
        assert route["confusion"][s["system"]][s["department"]] >= 1
    assert sum(n for agents in route["confusion"].values() for n in agents.values()) == 8
    assert data["draft"] == []  # route-only service: no drafts to compare
    text = mc("feedback", "--db", str(db), cwd=tmp_path)
    assert text.returncode == 0 and "reroute rate" in text.stdout

    export = mc("feedback", "export", "--out", "cases.jsonl", "--db", str(db), cwd=tmp_path)
    assert export.returncode == 1 and not (tmp_path / "cases.jsonl").exists()
    assert export.stderr.count("\n") == 1 and "store.store_email_bodies" in export.stderr


@pytest.mark.slow  # the eval harness embeds the cases for its baselines (MiniLM)
def test_feedback_export_is_an_eval_set_that_eval_runs(tmp_path: Path, model: FakeServer) -> None:
    emails = sample_emails(8, prefix="f")
    env = env_for(tmp_path, model, MAILCASCADE_STORE__STORE_EMAIL_BODIES="true")
    with Service(tmp_path, env) as service, service.client() as http:
        sent = post_feedback(http, emails)
    export = mc("feedback", "export", "--out", "cases.jsonl", "--db", str(tmp_path / "store.db"), cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    from mailcascade.eval.cases import load_cases

    cases = load_cases(tmp_path / "cases.jsonl")
    assert [c.id for c in cases] == [e["id"] for e in emails]
    for case, email, item in zip(cases, emails, sent, strict=True):
        assert case.email.subject == email["subject"] and case.email.body == email["body"]
        assert case.expected.department == item["department"]
        assert case.expected.reference_reply == (item["sent_reply"] or None)
    run = mc("eval", "cases.jsonl", "--stages", "route", "--out", "run", "--no-progress", cwd=tmp_path,
             env={"OPENAI_BASE_URL": model.base_url, "MAILCASCADE_STORE__PATH": str(tmp_path / "eval.db")})
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    accuracy = sum(s["department"] == s["system"] for s in sent) / 8  # the fake routes as it did when serving
    assert metrics["routing"]["accuracy"] == pytest.approx(accuracy)


@pytest.mark.slow  # loads the real embedding model and builds the sample catalogue's index
def test_the_full_cascade_over_http_with_the_index_loaded_before_ready(tmp_path: Path, model: FakeServer) -> None:
    env = env_for(tmp_path, model, stages="route,retrieve,draft",
                  MAILCASCADE_CATALOG__INDEX_DIR=str(tmp_path / "index"))
    with Service(tmp_path, env) as service, service.client() as http:
        while (ready := http.get("/readyz")).status_code == 503:
            assert ready.json()["checks"]["index"]["detail"] == "loading", ready.text
        assert ready.json() == {"ready": True, "checks": {"index": {"ok": True, "detail": "loaded"},
                                                           "model": {"ok": True, "detail": "answering"}}}
        email = sample_emails(1)[0]
        record = ResultRecord.model_validate(http.post("/v1/emails", json=api_email(email)).json())
        metrics = http.get("/metrics").text
    assert record.status == "ok" and [s.stage for s in record.stages] == ["route", "retrieve", "draft"]
    assert record.hits and record.draft and record.cited_product_ids == [record.hits[0].product_id]
    assert 'mailcascade_stage_latency_seconds_count{stage="retrieve"} 1.0' in metrics
