"""Large eval runs over the public Bitext data, for the report's size test and bench/bench_report.py.

`big_run` writes a run directory of N real Bitext utterances (test split, then validation) run through the whole
cascade (route, retrieve over the sample catalogue, draft) against the loopback fake model server. The fake model
writes replies of a realistic length, wraps some routing answers in chatter and a code fence, and truncates some
first drafts (the validator then asks again with more tokens), so records carry repaired and re-asked attempts.
The data is read by path from the shared folder ($MAILCASCADE_DATA_DIR, else ../shared/data) and never copied
into the repository.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fakes import HashEmbedder, keyword_department, last_user, product_ids_in, stage_of
from fakeserver import FakeServer, Reply
from mailcascade.config import LLMSettings, Settings, StoreSettings
from mailcascade.eval.evalset import load_eval_set
from mailcascade.eval.runner import EvalOptions, run_eval
from shared import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
BITEXT = SHARED_DATA / "bitext"
MAPPING = ROOT / "eval" / "mappings" / "bitext.toml"
PROMPTS = ROOT / "src" / "mailcascade" / "prompts"
SPLITS = ("Bitext_Sample_Customer_Service_Testing_Dataset.csv", "Bitext_Sample_Customer_Service_Validation_Dataset.csv")
REPLY = ("Thank you for writing to us, and sorry for the trouble. I have looked into your message: {what}. "
         "Here is what happens next: a colleague checks the details today and replies within one working day. "
         "If you have an order number or a photo of the item, please send it so we can help faster. "
         "The product information we rely on: {ids}. Kind regards, the customer service team")


def _bucket(text: str, n: int) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % n


def chatty_model(variant: str = "a") -> Callable[[dict[str, Any]], Reply]:
    """A fake model with the habits of a small real one (see the module docstring). Variant "b" routes one email
    in six to `general` instead, so two runs differ case by case."""
    seen: set[str] = set()
    lock = threading.Lock()

    def answer(body: dict[str, Any]) -> Reply:
        user = last_user(body)
        if stage_of(body) == "route":
            dept = keyword_department(user)
            if variant == "b" and _bucket(user, 6) == 0:
                dept = "general"
            doc = json.dumps({"department": dept, "confidence": 0.5 + _bucket(user, 50) / 100, "reason": "keywords"})
            return Reply(f"Sure! Here is the JSON:\n```json\n{doc}\n```" if _bucket(user, 5) == 0 else doc)
        ids = product_ids_in(body)[:2]
        doc = json.dumps({"reply": REPLY.format(what=" ".join(user.split())[:160], ids=", ".join(ids) or "none"),
                          "product_ids": ids})
        key = hashlib.sha256(json.dumps(body["messages"]).encode()).hexdigest()
        with lock:
            first = key not in seen
            seen.add(key)
        if first and _bucket(user, 6) == 0:
            return Reply(doc[: len(doc) // 2], finish_reason="length")
        return Reply(doc)

    return answer


def bitext_definition(folder: Path, n_cases: int) -> Path:
    """An eval definition over the first `n_cases` Bitext utterances (test split, then validation)."""
    rows: list[dict[str, str]] = []
    for name in SPLITS:
        with (BITEXT / name).open(newline="", encoding="utf-8") as f:
            rows += list(csv.DictReader(f))
    folder.mkdir(parents=True, exist_ok=True)
    cases = folder / f"bitext_{n_cases}.csv"
    with cases.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:n_cases])
    path = folder / f"bitext_{n_cases}.toml"
    path.write_text(f'name = "bitext-{n_cases}"\nadapter = "bitext"\npath = "{cases}"\n'
                    f'train_path = "{BITEXT / "Bitext_Sample_Customer_Service_Training_Dataset.csv"}"\n'
                    f'mapping = "{MAPPING}"\n', encoding="utf-8")
    return path


def big_run(work: Path, name: str, n_cases: int, *, variant: str = "a", concurrency: int = 8) -> Path:
    """Run N Bitext cases through route, retrieve and draft; returns the run directory (with report.html).
    Variant "b" uses another draft prompt and routes some emails differently (a run to compare with "a")."""
    prompts = work / f"prompts-{variant}"
    if not prompts.is_dir():
        shutil.copytree(PROMPTS, prompts)
        if variant == "b":
            draft = prompts / "draft.md"
            text = draft.read_text(encoding="utf-8")
            rule = "Keep the reply under 120 words.\nAnswer with one JSON"
            draft.write_text(text.replace("Answer with one JSON", rule), encoding="utf-8")
    with FakeServer(chatty_model(variant)) as server:
        settings = Settings().replace(
            llm=LLMSettings(base_url=server.base_url, model="fake-model", max_retries=1, backoff_initial_s=0.01,
                            backoff_max_s=0.02),
            store=StoreSettings(path=str(work / f"log-{name}.db")), prompts_dir=str(prompts))
        return run_eval(load_eval_set(bitext_definition(work / "data", n_cases)), work / name,
                        EvalOptions(progress=False, concurrency=concurrency), settings=settings,
                        embedder=HashEmbedder(), cache_dir=work / "cache")
