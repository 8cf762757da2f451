"""Every error a user can cause is one line, `mailcascade: error: ...`, naming what to fix; never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import tmpfs

ROOT = Path(__file__).resolve().parents[1]


def mc(*args: str, cwd: Path, env: dict[str, str] | None = None, stdout: int | None = None,
       ) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "MAILCASCADE_"))}
    full.update({"HF_HUB_OFFLINE": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "mailcascade.cli", *args], cwd=cwd, env=full, text=True,
                          stdout=stdout if stdout is not None else subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=300, check=False)


def one_line(done: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mailcascade: error:"), done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def emails(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"id": "a", "subject": "Where is my order?", "body": "Order 12 is late."}) + "\n")
    return path


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only filesystem (root ignores file modes, so a mode 0o555 folder would not do)."""
    with tmpfs(tmp_path / "ro", "ro,size=64k") as folder:
        yield folder


def unusable(tmp_path: Path, where: str, name: str, request: pytest.FixtureRequest) -> Path:
    """A path mailcascade cannot write: a folder, a file under a file, or a file on a read-only filesystem."""
    if where == "a folder":
        (tmp_path / name).mkdir()
        return tmp_path / name
    if where == "parent is a file":
        (tmp_path / "afile").write_text("x")
        return tmp_path / "afile" / name
    folder: Path = request.getfixturevalue("read_only_dir")
    return folder / name


@pytest.mark.parametrize("where", ["a folder", "parent is a file", "read-only"])
def test_an_unusable_store_path(tmp_path: Path, emails: Path, where: str, request: pytest.FixtureRequest) -> None:
    store = unusable(tmp_path, where, "store.db", request)
    done = mc("run", str(emails), "--out", str(tmp_path / "out.jsonl"), cwd=tmp_path,
              env={"MAILCASCADE_STORE__PATH": str(store)})
    one_line(done, 1, str(store), "[store] path")
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("where", ["a folder", "parent is a file", "read-only"])
def test_an_unusable_out(tmp_path: Path, emails: Path, where: str, request: pytest.FixtureRequest) -> None:
    out = unusable(tmp_path, where, "out.jsonl", request)
    done = mc("run", str(emails), "--out", str(out), cwd=tmp_path)
    one_line(done, 1, "--out", str(out))
    assert "Loading" not in done.stderr  # refused before the index or any model loaded


@pytest.mark.parametrize(("toml", "needles"), [
    ("llm = 5\n", ("llm", "table")),
    ("[input]\nmax_email_bytes = 0\n", ("input.max_email_bytes", ">= 1")),
    ("[llm]\nmax_retries = 1.7\n", ("llm.max_retries", "whole number")),
    ("[llm]\nmax_retries = true\n", ("llm.max_retries",)),
    ("[llm]\ntimeout_s = 0\n", ("llm.timeout_s", "> 0")),
    ("[validation]\nmax_attempts = 0\n", ("validation.max_attempts",)),
    ("[retrieval]\ntop_k = 0\n", ("retrieval.top_k",)),
    ("[validation.policy]\nrout = { truncated = 'reask' }\n", ("rout", "route")),
    ("[llm]\napi_key = 12345678\n", ("llm.api_key", "value hidden")),
])
def test_bad_config_values_are_one_line(tmp_path: Path, toml: str, needles: tuple[str, ...]) -> None:
    (tmp_path / "mailcascade.toml").write_text(toml)
    line = one_line(mc("config", cwd=tmp_path), 1, *needles)
    assert "12345678" not in line


def test_credentials_in_the_base_url_are_masked_everywhere(tmp_path: Path) -> None:
    url = "http://agent:s3cr3tpass@127.0.0.1:9/v1"
    shown = mc("config", cwd=tmp_path, env={"OPENAI_BASE_URL": url})
    assert shown.returncode == 0 and "s3cr3tpass" not in shown.stdout
    assert json.loads(shown.stdout)["llm"]["base_url"] == "http://agent:***@127.0.0.1:9/v1"
    from mailcascade.config import load_settings
    from mailcascade.store import Store

    store = Store(tmp_path / "log.db")
    store.start_run("run", load_settings(None, env={"OPENAI_BASE_URL": url}).to_dict())
    assert "s3cr3tpass" not in json.dumps(store.runs())


@pytest.mark.parametrize("args", [
    ("run", "in.jsonl", "--concurrency", "-3"),
    ("run",),
    ("eval", "x.toml", "--limit", "zero"),
    ("bogus-command",),
])
def test_usage_errors_are_one_line_and_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    one_line(mc(*args, cwd=tmp_path), 2, "--help")


def test_report_on_a_run_without_metrics_recomputes_them(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"name": "x", "labels": ["orders", "out_of_scope"]}))
    (run / "cases.jsonl").write_text("")
    done = mc("report", str(run), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (run / "report.html").is_file()
    missing = mc("report", str(tmp_path / "nope"), cwd=tmp_path)
    one_line(missing, 1, "not a run directory")


def test_config_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written, like `mailcascade config | head -0`
    try:
        done = mc("config", cwd=tmp_path, stdout=write)
    finally:
        os.close(write)
    assert done.returncode == 141 and done.stderr == ""
