"""Start-up: `mailcascade --help` and `mailcascade config` load neither torch nor the model SDK (nor faiss or
sentence-transformers). Checked on the modules a fresh interpreter has imported, not on a clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "sentence_transformers", "faiss", "openai", "transformers", "onnxruntime")
PROBE = """
import contextlib, io, json, sys
from mailcascade.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:  # --help exits
        code = exc.code
sys.stderr.write(json.dumps({"code": code, "out": out.getvalue(), "modules": sorted(sys.modules)}))
"""


def _modules_after(*args: str, cwd: Path) -> tuple[int, str, set[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "MAILCASCADE_"))}
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return int(report["code"] or 0), str(report["out"]), {m.split(".")[0] for m in report["modules"]}


@pytest.mark.parametrize("args", [("--help",), ("config",), ("run", "--help"), ("eval", "--help")])
def test_help_and_config_import_no_heavy_module(args: tuple[str, ...], tmp_path: Path) -> None:
    code, out, modules = _modules_after(*args, cwd=tmp_path)
    assert code == 0
    assert "mailcascade" in modules and out.strip()  # the command really ran and printed
    if args == ("config",):
        assert json.loads(out)["embedding"]["device"] == "cpu"
    assert sorted(modules & set(HEAVY)) == []


def test_the_probe_sees_heavy_imports(tmp_path: Path) -> None:
    """The check above can fail: importing the pipeline does load torch-side modules."""
    done = subprocess.run([sys.executable, "-c", "import sys, mailcascade; mailcascade.Pipeline; "
                           "print(' '.join(sorted(sys.modules)))"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, check=True)
    assert {"openai", "faiss"} & {m.split(".")[0] for m in done.stdout.split()}
