"""The eval harness end to end: fake model server, fake embedder, the project's sample eval set."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fakes import HashEmbedder, sensible, stage_of
from fakeserver import FakeServer
from mailcascade.config import LLMSettings, Settings, StoreSettings
from mailcascade.eval.evalset import load_eval_set
from mailcascade.eval.records import compute_metrics
from mailcascade.eval.runner import EvalOptions, read_records, run_eval

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample_emails.jsonl"


def settings_for(server: FakeServer, tmp_path: Path, prompts: Path | None = None) -> Settings:
    s = Settings()
    return s.replace(
        llm=LLMSettings(base_url=server.base_url, model="fake-model", max_retries=1, backoff_initial_s=0.01,
                        backoff_max_s=0.02),
        store=StoreSettings(path=str(tmp_path / "log.db")),
        prompts_dir=str(prompts or ""),
    )


def run(server: FakeServer, tmp_path: Path, out: str, options: EvalOptions, prompts: Path | None = None) -> Path:
    return run_eval(load_eval_set(SAMPLE), tmp_path / out, options, settings=settings_for(server, tmp_path, prompts),
                    embedder=HashEmbedder(), cache_dir=tmp_path / "cache")


def test_a_run_writes_records_metrics_and_report_that_agree(tmp_path: Path) -> None:
    with FakeServer(sensible) as server:
        run_dir = run(server, tmp_path, "r1", EvalOptions(progress=False, concurrency=4))
    records = read_records(run_dir / "cases.jsonl").records
    info = json.loads((run_dir / "run.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert sorted(r["id"] for r in records) == sorted(info["case_ids"]) and len(records) == 43
    # the numbers in metrics.json are exactly what the per-case records give
    order = {cid: i for i, cid in enumerate(info["case_ids"])}
    records.sort(key=lambda r: order[r["id"]])
    assert compute_metrics(records, labels=info["labels"], level=info["relevance_level"]) == metrics
    routing = metrics["routing"]
    low, high = routing["accuracy_ci"]
    assert 0 < routing["accuracy"] <= 1 and low <= routing["accuracy"] <= high
    assert set(routing["baselines"]) == {"majority", "embedding_knn", "embedding_logreg", "always_out_of_scope"}
    # computed while the cases ran, written into every record after the run
    assert all(set(r["baselines"]) == set(routing["baselines"]) for r in records)
    assert all(set(r["baseline_confidence"]) == {"embedding_knn", "embedding_logreg"} for r in records)
    assert routing["majority_baseline"]["name"] in ("majority", "always_out_of_scope")
    assert metrics["retrieval"]["recall@10"] >= metrics["retrieval"]["recall@1"]
    assert metrics["drafting"]["valid_share"] == 1.0
    assert info["prompts"]["route"]["hash"] and info["status"] == "done"
    assert (run_dir / "report.html").read_text().count("<svg") >= 3


def test_editing_only_the_draft_prompt_recalls_only_drafts(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts"
    shutil.copytree(ROOT / "src" / "mailcascade" / "prompts", prompts)
    options = EvalOptions(progress=False, limit=10)
    with FakeServer(sensible) as server:
        run(server, tmp_path, "a", options, prompts)
        first = len(server.chat_requests)
        draft = prompts / "draft.md"
        draft.write_text(draft.read_text().replace("a colleague will check", "a teammate will check"))
        run_b = run(server, tmp_path, "b", options, prompts)
        second = [r.body for r in server.chat_requests[first:]]
    assert first == 20
    assert len(second) == 10 and all(stage_of(b) == "draft" for b in second)
    cost = json.loads((run_b / "metrics.json").read_text())["cost"]["stages"]
    assert cost["route"]["llm_calls_cached"] == cost["route"]["llm_calls"] == 10
    assert cost["draft"]["llm_calls_cached"] == 0


def test_stages_and_gold_inputs(tmp_path: Path) -> None:
    with FakeServer(sensible) as server:
        only = run(server, tmp_path, "rr", EvalOptions(progress=False, limit=6, stages=("route", "retrieve")))
        assert all(stage_of(r.body) == "route" for r in server.chat_requests)
        calls = len(server.chat_requests)
        gold = run(server, tmp_path, "gold", EvalOptions(progress=False, limit=6, stages=("retrieve", "draft"),
                                                          gold=("department",)))
        assert all(stage_of(r.body) == "draft" for r in server.chat_requests[calls:])
    m_only = json.loads((only / "metrics.json").read_text())
    assert "drafting" not in m_only and "routing" in m_only and "retrieval" in m_only
    m_gold = json.loads((gold / "metrics.json").read_text())
    assert "routing" not in m_gold and m_gold["drafting"]["n"] == 6


def test_an_existing_run_needs_resume(tmp_path: Path) -> None:
    from mailcascade.errors import EvalError

    with FakeServer(sensible) as server:
        run(server, tmp_path, "x", EvalOptions(progress=False, limit=2))
        with pytest.raises(EvalError, match="--resume"):
            run(server, tmp_path, "x", EvalOptions(progress=False, limit=2))
        again = run(server, tmp_path, "x", EvalOptions(progress=False, limit=2, resume=True))
    assert len(read_records(again / "cases.jsonl").records) == 2


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_with_every_case_exactly_once(tmp_path: Path) -> None:
    """A real `mailcascade eval` process, killed mid-run, then resumed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MAILCASCADE_STORE__PATH": str(tmp_path / "log.db"),
           "MAILCASCADE_LLM__MAX_RETRIES": "1"}
    out = tmp_path / "killed"
    with FakeServer(sensible, latency_s=0.15) as server:
        env["OPENAI_BASE_URL"] = server.base_url
        cmd = [sys.executable, "-m", "mailcascade.cli", "eval", str(SAMPLE), "--out", str(out), "--no-progress",
               "--concurrency", "2"]
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        records = out / "cases.jsonl"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if records.is_file() and records.read_text().count("\n") >= 5:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        partial = len(read_records(records).records)
        assert 5 <= partial < 43
        done = subprocess.run([*cmd, "--resume"], env=env, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    ids = [r["id"] for r in read_records(records).records]
    assert len(ids) == 43 and len(set(ids)) == 43
    # the killed run's records got their baselines when the resumed run finished
    assert all(len(r["baselines"]) == 4 for r in read_records(records).records)
    assert json.loads((out / "run.json").read_text())["resumed"] == 1


def test_a_damaged_line_in_cases_jsonl_is_one_clear_error(tmp_path: Path) -> None:
    from mailcascade.errors import EvalError

    with FakeServer(sensible) as server:
        first = run(server, tmp_path, "x", EvalOptions(progress=False, limit=3))
        lines = (first / "cases.jsonl").read_text().splitlines()
        (first / "cases.jsonl").write_text("\n".join([lines[0], '{"id": "broken', *lines[1:]]) + "\n")
        with pytest.raises(EvalError, match=r"cases.jsonl:2: not a JSON record .*delete that line"):
            run(server, tmp_path, "x", EvalOptions(progress=False, limit=3, resume=True))


def test_a_torn_last_line_is_kept_when_the_command_refuses(tmp_path: Path) -> None:
    from mailcascade.errors import EvalError

    with FakeServer(sensible) as server:
        first = run(server, tmp_path, "x", EvalOptions(progress=False, limit=3))
        cases = first / "cases.jsonl"
        cases.write_text(cases.read_text() + '{"id": "torn", "sta')
        before = cases.read_bytes()
        with pytest.raises(EvalError, match="--resume"):  # no --resume: refused, nothing changed on disk
            run(server, tmp_path, "x", EvalOptions(progress=False, limit=3))
        with pytest.raises(EvalError, match="another selection"):  # refused for another reason: still unchanged
            run(server, tmp_path, "x", EvalOptions(progress=False, limit=2, resume=True))
        assert cases.read_bytes() == before
        run(server, tmp_path, "x", EvalOptions(progress=False, limit=3, resume=True))
    assert [r["id"] for r in read_records(cases).records] == [json.loads(line)["id"] for line in
                                                            before.decode().splitlines()[:3]]


def test_transport_failures_never_lower_a_model_metric_and_retry_errors_reruns_them(tmp_path: Path) -> None:
    import hashlib

    from fakes import last_user
    from fakeserver import Status

    def half_dead(body: dict[str, object]) -> object:  # a third of the emails never get an answer
        unlucky = hashlib.md5(last_user(body).encode()).digest()[0] % 3 == 0  # type: ignore[arg-type]
        return Status(503) if unlucky else sensible(body)  # type: ignore[arg-type]

    with FakeServer(sensible) as healthy:
        clean = run(healthy, tmp_path, "clean", EvalOptions(progress=False, limit=12, stages=("route",)))
    with FakeServer(half_dead) as flaky:  # type: ignore[arg-type]
        hurt = run(flaky, tmp_path, "hurt", EvalOptions(progress=False, limit=12, stages=("route",)))
    good = json.loads((clean / "metrics.json").read_text())
    bad = json.loads((hurt / "metrics.json").read_text())
    assert bad["infrastructure"]["n_cases"] > 0 and set(bad["infrastructure"]["codes"]) == {"server_error"}
    records = read_records(hurt / "cases.jsonl").records
    errored = [r for r in records if any(s["status"] == "error" for s in r["stages"])]
    assert len(errored) == bad["infrastructure"]["n_cases"]
    # scored only on cases that got an answer: the same per-case outcomes as the healthy run on those cases
    assert bad["routing"]["n"] == good["routing"]["n"] - len(errored)
    funnel = bad["validator"]["route"]
    assert funnel["failed"] == 0 and funnel["calls"] == 12 - len(errored)
    with FakeServer(sensible) as healthy:
        fixed = run(healthy, tmp_path, "hurt", EvalOptions(progress=False, limit=12, stages=("route",), resume=True,
                                                           retry_errors=True))
    after = json.loads((fixed / "metrics.json").read_text())
    assert after["infrastructure"]["n_cases"] == 0 and after["routing"]["accuracy"] == good["routing"]["accuracy"]
    assert len(read_records(fixed / "cases.jsonl").records) == 12
