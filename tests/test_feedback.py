"""Feedback statistics and the exported eval set, from store rows (no server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rapidfuzz.distance import Levenshtein

from mailcascade.errors import MailcascadeError
from mailcascade.eval.cases import load_cases
from mailcascade.feedback import export_cases, feedback_stats, format_stats, load_feedback
from mailcascade.store import Store


def record(email_id: str, department: str | None, draft: str | None, *, route: str = "r1",
           draft_hash: str = "d1") -> str:
    stages = [{"stage": "route", "status": "ok" if department else "failed", "prompt_hash": route, "model": "m"},
              {"stage": "retrieve", "status": "ok", "prompt_hash": "", "model": "idx"}]
    if draft is not None:
        stages.append({"stage": "draft", "status": "ok", "prompt_hash": draft_hash, "model": "m"})
    return json.dumps({"id": email_id, "status": "ok", "department": department, "draft": draft, "stages": stages})


def fill(store: Store, rows: list[tuple[str, str | None, str | None, str, str, str]], *, bodies: bool) -> None:
    for email_id, system, draft, agent, sent, outcome in rows:
        store.put_served(email_id, record(email_id, system, draft), subject=f"S {email_id}" if bodies else None,
                         body="body" if bodies else None, sender=None)
        store.add_feedback(f"f-{email_id}", email_id, agent, sent, outcome)


ROWS: list[tuple[str, str | None, str | None, str, str, str]] = [
    ("e1", "orders", "Your order ships today.", "orders", "Your order ships today.", "sent_as_is"),
    ("e2", "orders", "Your order ships today.", "shipping", "Your parcel ships today.", "rerouted"),
    ("e3", "billing", "We refunded you.", "billing", "We refunded you twice.", "edited"),
    ("e4", None, None, "general", "", "discarded"),
]


def test_statistics_per_prompt_and_model(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        fill(store, ROWS, bodies=False)
        stats = feedback_stats(load_feedback(store))
    assert stats["emails"] == 4 and stats["outcomes"] == {"sent_as_is": 1, "rerouted": 1, "edited": 1,
                                                          "discarded": 1}
    (route,) = stats["route"]
    assert (route["prompt_hash"], route["model"], route["n"]) == ("r1", "m", 4)
    assert route["reroute_rate"] == pytest.approx(2 / 4)  # e2 moved; e4 had no department
    assert route["confusion"] == {"(none)": {"general": 1}, "billing": {"billing": 1},
                                  "orders": {"orders": 1, "shipping": 1}}
    (draft,) = stats["draft"]
    assert (draft["prompt_hash"], draft["n"]) == ("d1", 3)
    assert draft["sent_as_is"] == pytest.approx(1 / 3) and draft["discarded"] == 0
    expected = [0.0, Levenshtein.normalized_distance("Your order ships today.", "Your parcel ships today."),
                Levenshtein.normalized_distance("We refunded you.", "We refunded you twice.")]
    assert draft["edit_distance"] == pytest.approx(sum(expected) / 3) and draft["edit_distance_n"] == 3
    assert 0 < draft["edit_distance"] < 0.5
    text = format_stats(stats)
    assert "system orders -> agent orders 1, shipping 1" in text and "0.500" in text


def test_prompt_versions_are_counted_apart_and_the_latest_feedback_counts(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        store.put_served("a", record("a", "orders", "x", draft_hash="old"), subject=None, body=None, sender=None)
        store.put_served("b", record("b", "orders", "x", draft_hash="new"), subject=None, body=None, sender=None)
        store.add_feedback("f1", "a", "orders", "y", "rewritten")
        store.add_feedback("f2", "b", "orders", "x", "sent_as_is")
        store.add_feedback("f3", "a", "orders", "x", "sent_as_is")  # the agent's second word on a
        stats = feedback_stats(load_feedback(store))
    assert [(d["prompt_hash"], d["n"], d["sent_as_is"]) for d in stats["draft"]] == [("new", 1, 1.0),
                                                                                    ("old", 1, 1.0)]


def test_export_writes_eval_cases_and_says_when_text_was_not_stored(tmp_path: Path) -> None:
    with Store(tmp_path / "kept.db") as store:
        fill(store, ROWS[:2], bodies=True)
        fill(store, ROWS[2:], bodies=False)
        rows: list[dict[str, Any]] = load_feedback(store)
    written, missing = export_cases(rows, tmp_path / "cases.jsonl")
    assert (written, missing) == (2, 2)
    cases = load_cases(tmp_path / "cases.jsonl")
    assert [(c.id, c.expected.department, c.expected.reference_reply) for c in cases] == [
        ("e1", "orders", "Your order ships today."), ("e2", "shipping", "Your parcel ships today.")]
    assert cases[1].meta["system_department"] == "orders" and cases[1].meta["outcome"] == "rerouted"
    with pytest.raises(MailcascadeError, match="store_email_bodies"):
        export_cases(rows[2:], tmp_path / "none.jsonl")
    with pytest.raises(MailcascadeError, match="no feedback"):
        export_cases([], tmp_path / "none.jsonl")
    assert not (tmp_path / "none.jsonl").exists()
