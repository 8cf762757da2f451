"""`--engine ray` on a real local Ray cluster (the machine's CPUs, 2 here) against the loopback fake model server:
the same records and metrics as the local engine, kill-and-resume exactly once, a killed worker retried."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fakes import sensible
from fakeserver import FakeServer, Step
from test_faults import base_env, mc, records, start, wait_for_lines, write_emails

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
pytestmark = pytest.mark.slow  # each test starts a Ray cluster and loads the embedding model per actor

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"latency_ms", "queue_ms", "seconds", "started", "finished", "created"}


def untimed(value: Any) -> Any:
    """`value` without timings (and the run directory's own name), for comparing two runs."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k not in TIMING and "latency" not in k}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), children first."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("index")
    done = mc("index", "build", cwd=folder, env={"MAILCASCADE_CATALOG__INDEX_DIR": str(folder / "index")})
    assert done.returncode == 0, done.stderr
    return folder / "index"


@pytest.fixture
def ray_tmp(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A Ray temp folder of the test's own (short: Ray's socket paths must fit), so the processes of the clusters
    it starts can be found and ended by pid afterwards."""
    folder = Path("/tmp") / f"rt{os.getpid()}{tmp_path.name[-6:]}"
    folder.mkdir(exist_ok=True)
    yield {"RAY_TMPDIR": str(folder)}
    leftovers = [int(p) for p in os.listdir("/proc") if p.isdigit() and str(folder) in cmdline(int(p))]
    kill_all(leftovers)
    shutil.rmtree(folder, ignore_errors=True)


def test_an_eval_on_ray_gives_the_same_records_and_metrics_as_the_local_engine(
    index_dir: Path, tmp_path: Path, ray_tmp: dict[str, str],
) -> None:
    runs = {}
    with FakeServer(sensible) as server:  # type: ignore[arg-type]
        for engine in ("local", "ray"):
            env = {**base_env(index_dir, tmp_path, server.base_url), **ray_tmp,
                   "MAILCASCADE_STORE__PATH": str(tmp_path / f"{engine}.db")}  # no answers from the other's cache
            done = mc("eval", str(ROOT / "eval" / "sample.toml"), "--out", str(tmp_path / engine), "--engine",
                      engine, "--no-progress", cwd=tmp_path, env=env)
            assert done.returncode == 0, done.stderr[-3000:]
            runs[engine] = tmp_path / engine
    local, on_ray = (records(runs[e] / "cases.jsonl") for e in ("local", "ray"))
    assert len(local) == 43 and sorted(r["id"] for r in on_ray) == sorted(r["id"] for r in local)
    by_id = {r["id"]: untimed(r) for r in on_ray}
    for record in local:
        assert by_id[record["id"]] == untimed(record)
    metrics = {e: json.loads((runs[e] / "metrics.json").read_text()) for e in runs}
    assert untimed(metrics["ray"]) == untimed(metrics["local"])
    assert metrics["local"]["routing"]["accuracy"] > 0.5 and metrics["local"]["drafting"]["valid_share"] == 1.0


def test_a_killed_ray_run_resumed_ends_with_every_email_exactly_once(
    index_dir: Path, tmp_path: Path, ray_tmp: dict[str, str],
) -> None:
    ids = write_emails(tmp_path / "in.jsonl", 80)
    with FakeServer(sensible, latency_s=0.1) as server:  # type: ignore[arg-type]
        env = {**base_env(index_dir, tmp_path, server.base_url), **ray_tmp}
        first = start("run", "in.jsonl", "--out", "out.jsonl", "--engine", "ray", "--no-progress", cwd=tmp_path,
                      env=env)
        wait_for_lines(tmp_path / "out.jsonl.partial", 10, first)
        below = descendants(first.pid)  # the local Ray it started: ended by pid after the kill
        assert first.poll() is None, first.communicate()[1][-3000:]
        first.send_signal(signal.SIGKILL)
        first.wait()
        kill_all(below)
        kept = records(tmp_path / "out.jsonl.partial")
        assert 10 <= len(kept) < len(ids)
        done = mc("run", "in.jsonl", "--out", "out.jsonl", "--engine", "ray", "--resume", "--no-progress",
                  cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = records(tmp_path / "out.jsonl")
    assert [r["id"] for r in out] == ids  # every input exactly once, in input order
    assert all(r["status"] == "ok" for r in out)
    assert f"{len(kept)} kept from before" in done.stderr


def test_a_worker_killed_mid_job_is_retried_without_loss_or_duplicates(
    index_dir: Path, tmp_path: Path, ray_tmp: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mailcascade.config import load_settings
    from mailcascade.email_parse import read_inputs
    from mailcascade.engines.ray_engine import run_on_ray
    from mailcascade.pipeline import Pipeline
    from mailcascade.record import record_dict

    ids = write_emails(tmp_path / "in.jsonl", 60)
    killed: list[int] = []
    lock = threading.Lock()

    def kill_a_worker_once(body: dict[str, Any]) -> Step:
        with lock:
            if not killed and len(served) == 20:  # mid-job: some batches done, others in flight
                workers = [p for p in descendants(os.getpid()) if "CascadeActor" in cmdline(p)]
                if workers:
                    os.kill(workers[0], signal.SIGKILL)
                    killed.append(workers[0])
            served.append(1)
        return sensible(body)

    served: list[int] = []
    for key, value in ray_tmp.items():
        monkeypatch.setenv(key, value)
    with FakeServer(kill_a_worker_once) as server:  # type: ignore[arg-type]
        env = {**base_env(index_dir, tmp_path, server.base_url), "MAILCASCADE_STORE__CACHE": "false"}
        settings = load_settings(None, env=env)
        items = list(read_inputs([str(tmp_path / "in.jsonl")], max_bytes=settings.input.max_email_bytes))
        seen: list[int] = []
        on_ray = run_on_ray(settings, items, lambda n, r: seen.append(n), batch_size=5)
        with Pipeline.from_config(settings=settings) as pipeline:
            local = pipeline.run_many(items)
    assert killed, "no Ray worker was found to kill"
    assert sorted(seen) == list(range(len(ids)))  # each email reported once
    assert [r.id for r in on_ray] == ids
    assert [untimed(record_dict(r)) for r in on_ray] == [untimed(record_dict(r)) for r in local]
