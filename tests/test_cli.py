"""The CLI as a user runs it: `python -m mailcascade.cli ...` in a subprocess, model = the fake server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fakes import sensible, stage_of
from fakeserver import FakeServer, Reply

ROOT = Path(__file__).resolve().parents[1]
ROUTE_SCHEMA = {
    "type": "object",
    "properties": {"department": {"type": "string", "enum": ["orders", "billing", "out_of_scope"]},
                   "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
    "required": ["department", "confidence"], "additionalProperties": False,
}


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None,
        ) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "MAILCASCADE_"))}
    full.update({"HF_HUB_OFFLINE": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "mailcascade.cli", *args], cwd=cwd, env=full, input=stdin,
                          capture_output=True, text=True, timeout=600, check=False)


def test_config_prints_effective_settings_with_secrets_redacted(tmp_path: Path) -> None:
    done = cli("config", cwd=tmp_path, env={"OPENAI_API_KEY": "sk-topsecret", "MAILCASCADE_RETRIEVAL__TOP_K": "9"})
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["retrieval"]["top_k"] == 9 and "sk-topsecret" not in done.stdout


def test_bad_configuration_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "mailcascade.toml").write_text("[llm]\nstructured_output = 'xml'\n")
    done = cli("config", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("mailcascade: error:") and "structured_output" in done.stderr
    assert "Traceback" not in done.stderr


def test_validate_prints_one_verdict_per_input_in_order(tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(ROUTE_SCHEMA))
    (tmp_path / "a.txt").write_text('Sure! ```json\n{"department": "billing", "confidence": 0.5}\n```')
    (tmp_path / "b.txt").write_text('{"department": "billing", "confidence": 0.5}')
    done = cli("validate", "--schema", str(schema), "a.txt", "-", "b.txt", "missing.txt", cwd=tmp_path,
               stdin='{"confidence": 0.5, "department": "orders"')
    assert done.returncode == 0, done.stderr
    verdicts = [json.loads(line) for line in done.stdout.splitlines()]
    assert [v["input"] for v in verdicts] == ["a.txt", "-", "b.txt", "missing.txt"]
    assert [v["status"] for v in verdicts] == ["repaired", "lossy", "clean", "failed"]
    assert {c["code"] for c in verdicts[0]["codes"]} >= {"prefix_text", "code_fence"}
    assert verdicts[1]["codes"][0]["code"] == "truncated" and verdicts[2]["codes"] == []
    assert verdicts[2]["value"] == {"department": "billing", "confidence": 0.5}
    length = cli("validate", "--schema", str(schema), "--finish-reason", "length", "b.txt", cwd=tmp_path)
    assert json.loads(length.stdout)["status"] != "clean"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A `mailcascade run` over sample emails plus malformed files, against the fake server."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    lines = (ROOT / "data" / "sample_emails.jsonl").read_text().splitlines()[:6]
    (inputs / "emails.jsonl").write_text("\n".join([*lines[:3], "{not json", *lines[3:]]) + "\n")
    (inputs / "blob.eml").write_bytes(bytes(range(256)) * 4)
    (inputs / "empty.txt").write_text("")
    shutil_copy = (ROOT / "data" / "emails").iterdir()
    for f in shutil_copy:
        (inputs / f.name).write_bytes(f.read_bytes())
    calls = {"n": 0}

    def responder(body: dict[str, object]) -> object:
        calls["n"] += 1
        if stage_of(body) == "route" and calls["n"] % 3 == 0:  # now and then chatter around the JSON
            return Reply('Here you go: {"department": "orders", "confidence": 0.6, "reason": "x"} Thanks!')
        return sensible(body)  # type: ignore[arg-type]

    with FakeServer(responder) as server:  # type: ignore[arg-type]
        done = cli("run", str(inputs), "--out", "results.jsonl", "--no-progress", cwd=tmp_path,
                   env={"OPENAI_BASE_URL": server.base_url, "MAILCASCADE_EMBEDDING__BATCH_SIZE": "16"})
    assert done.returncode == 3, done.stderr[-2000:]  # 3: some inputs failed (the malformed ones)
    return tmp_path


@pytest.mark.slow
def test_run_writes_one_record_per_input_and_the_failure_log_explains_them(run_dir: Path) -> None:
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    n_loose = len(list((ROOT / "data" / "emails").iterdir()))
    assert len(records) == 6 + 1 + 2 + n_loose  # six emails, one bad JSONL line, two unreadable files, loose ones
    failed = {Path(r["source"]).name.split(":")[0]: r["error"] for r in records if r["status"] == "failed"}
    assert "invalid JSON" in failed["emails.jsonl"] and "binary" in failed["blob.eml"] and failed["empty.txt"]
    ok = [r for r in records if r["status"] == "ok"]
    assert len(ok) == 6 + n_loose and all(r["draft"] and r["hits"] for r in ok)

    report = cli("failures", cwd=run_dir)
    assert report.returncode == 0, report.stderr
    assert "funnel per stage" in report.stdout and "prefix_text" in report.stdout
    stats = json.loads(cli("failures", "--json", cwd=run_dir).stdout)
    route = [row for row in stats["funnel"].values() if row["stage"] == "route"]
    assert len(route) == 1 and route[0]["model"] == "smollm2-135m-instruct" and len(route[0]["prompt_hash"]) == 12
    assert route[0]["calls"] == len(ok) and route[0]["repaired_first"] >= 1
    examples = cli("failures", "--examples", "suffix_text", cwd=run_dir).stdout
    assert "Thanks!" in examples
    replay = cli("failures", "replay", cwd=run_dir)
    assert replay.returncode == 0 and replay.stdout == "" and ": 0 changed" in replay.stderr
    export = cli("failures", "export", "prefix_text", "--out", "fixtures", cwd=run_dir)
    cases = [json.loads(line) for line in (run_dir / "fixtures" / "prefix_text.jsonl").read_text().splitlines()]
    assert export.returncode == 0 and cases and all("prefix_text" in c["expected_codes"] for c in cases)


def test_failures_without_a_log_says_what_to_do(tmp_path: Path) -> None:
    done = cli("failures", cwd=tmp_path)
    assert done.returncode == 1 and "run `mailcascade run`" in done.stderr


@pytest.mark.slow
def test_sigterm_stops_a_run_cleanly_and_it_resumes(tmp_path: Path) -> None:
    import signal
    import time

    cases = ROOT / "data" / "sample_emails.jsonl"
    with FakeServer(sensible, latency_s=0.2) as server:  # type: ignore[arg-type]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "MAILCASCADE_"))}
        env.update({"HF_HUB_OFFLINE": "1", "OPENAI_BASE_URL": server.base_url})
        cmd = [sys.executable, "-m", "mailcascade.cli", "eval", str(cases), "--out", "run", "--no-progress",
               "--concurrency", "2"]
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        records = tmp_path / "run" / "cases.jsonl"
        while proc.poll() is None and not (records.is_file() and records.read_text().count("\n") >= 3):
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 143 and "mailcascade: terminated" in err
        resumed = subprocess.run([*cmd, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True,
                                 timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ids = [json.loads(line)["id"] for line in records.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 43


@pytest.mark.slow
def test_log_level_shows_the_librarys_records_on_stderr_and_the_default_stays_quiet(tmp_path: Path) -> None:
    (tmp_path / "mail.txt").write_text("Subject: my order\n\nWhere is order 1234? It is late.", encoding="utf-8")
    with FakeServer(sensible) as server:
        env = {"OPENAI_BASE_URL": server.base_url}
        quiet = cli("run", "mail.txt", "--out", "a.jsonl", "--no-progress", cwd=tmp_path, env=env)
        loud = cli("--log-level", "debug", "run", "mail.txt", "--out", "b.jsonl", "--no-progress", cwd=tmp_path,
                   env=env)
    assert quiet.returncode == 0 and loud.returncode == 0, (quiet.stderr, loud.stderr)
    assert "mailcascade: INFO" not in quiet.stderr and "mailcascade: DEBUG" not in quiet.stderr
    info = [line for line in loud.stderr.splitlines() if line.startswith("mailcascade: INFO: ")]
    assert any("catalogue index ready" in line for line in info)
    assert any("finished: 1 ok, 0 failed" in line for line in info)
    assert any(line.startswith("mailcascade: DEBUG: ") for line in loud.stderr.splitlines())
    assert "1234" not in loud.stderr and "late" not in loud.stderr  # ids, counts and timings only
    bad = cli("--log-level", "chatty", "config", cwd=tmp_path)
    assert bad.returncode == 2 and "invalid choice: 'chatty'" in bad.stderr
