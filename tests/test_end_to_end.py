"""The README's first command in small: `mailcascade run` on a few emails with the embedded default model.

Real llama.cpp server (started by the command and stopped after), real embeddings, real FAISS index.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mailcascade.config import LocalServerSettings

ROOT = Path(__file__).resolve().parents[1]


def port_busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_run_on_a_few_emails_with_the_embedded_model(tmp_path: Path) -> None:
    if port_busy(8765):
        pytest.skip("port 8765 is busy (another local model server is running)")
    emails = tmp_path / "in"
    emails.mkdir()
    lines = (ROOT / "data" / "sample_emails.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    (emails / "three.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (emails / "broken.eml").write_bytes(b"\x00\x01\x02 not an email \xff\xfe")
    (emails / "empty.txt").write_text("", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "MAILCASCADE_"))}
    env["HF_HUB_OFFLINE"] = "1"
    out = tmp_path / "results.jsonl"
    done = subprocess.run([sys.executable, "-m", "mailcascade.cli", "run", str(emails), "--out", str(out),
                           "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    assert done.returncode == 3, done.stderr[-3000:]  # 3: some inputs failed (the two unreadable files)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 5  # one per email, one per unreadable file
    by_status = {r["id"]: r for r in records}
    failed = [r for r in records if r["status"] == "failed" and not r["stages"]]
    assert {Path(r["source"]).name for r in failed} == {"broken.eml", "empty.txt"}
    assert all(r["error"] for r in failed)
    emails_done = [r for r in records if r["stages"]]
    assert len(emails_done) == 3 and len(by_status) == 5
    for r in emails_done:
        stages = {s["stage"]: s for s in r["stages"]}
        # no configuration: strategy "auto" routes with the k-NN router over the shipped examples, the model drafts
        assert stages["route"]["model"].startswith("knn:") and not stages["route"].get("attempts")
        assert stages["draft"]["model"] == LocalServerSettings().model_name  # F16 weights, flash attention
        assert len(stages["draft"]["prompt_hash"]) == 12
        assert stages["draft"]["tokens_out"] > 0 and stages["draft"]["latency_ms"] > 0
        assert len(r["hits"]) == 5 and all(h["product_id"].startswith("P") for h in r["hits"])
        if r["status"] == "ok":
            assert r["department"] and isinstance(r["draft"], str) and r["draft"]
    assert not port_busy(8765)  # the command stopped the server it started
    assert len(list((tmp_path / ".mailcascade" / "models").glob("*.f16.gguf"))) == 1  # converted once, in the cwd
    assert "failure log" in done.stderr
