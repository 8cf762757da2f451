"""Eval sets: the case format, the dataset adapters, mappings and eval definitions."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from mailcascade.config import Settings, load_settings
from mailcascade.errors import EvalError
from mailcascade.eval.adapters import bitext, epqa, hint3, jsonl, load_mapping
from mailcascade.eval.cases import Expected, case_to_json, load_cases, make_case, write_cases
from mailcascade.eval.evalset import check_departments, load_eval_set
from shared import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
EVAL_DIR = ROOT / "eval"
DEFAULT_DEPARTMENTS = Settings().department_names

needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"public datasets not found at {SHARED_DATA} (the ../shared/data folder)"
)


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_lines(path: Path, records: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def case_record(case_id: str = "c1", **changes: object) -> dict[str, object]:
    record: dict[str, object] = {"id": case_id, "email": {"subject": "Where is my parcel", "body": "It is late."},
                                 "expected": {"department": "shipping"}}
    record.update(changes)
    return record


# ---------------------------------------------------------------- case format


def test_cases_round_trip(tmp_path: Path) -> None:
    cases = [
        make_case("a", subject="Refund", body="Where is my refund?", sender="x@example.com",
                  expected=Expected(department="returns", relevant={"P1": 1, "P2": 1}, reference_reply="Soon."),
                  meta={"note": "n", "tags": [1, 2]}),
        make_case("b", subject="", body="Does it fit?", expected=Expected(relevant={"P1:ab": 2, "P1:cd": 1}),
                  split="dev"),
        make_case("c", subject="Hello", body="", expected=Expected()),
    ]
    out = tmp_path / "sub" / "cases.jsonl"
    write_cases(out, cases)
    loaded = load_cases(out)
    assert [case_to_json(c) for c in loaded] == [case_to_json(c) for c in cases]
    assert loaded[0].expected.relevant == {"P1": 1, "P2": 1}
    assert loaded[1].expected.relevant == {"P1:ab": 2, "P1:cd": 1}
    assert loaded[1].split == "dev" and loaded[0].split == "test"
    assert loaded[0].email.id == "a" and loaded[0].email.sender == "x@example.com"
    assert loaded[0].email.source == f"{out}:1"


def test_relevant_forms_are_equivalent(tmp_path: Path) -> None:
    forms = [["P1", "P2"], [{"id": "P1"}, {"id": "P2", "grade": 1}], {"P1": 1, "P2": 1}]
    path = write_lines(tmp_path / "c.jsonl", [
        case_record(f"c{i}", expected={"relevant": form}) for i, form in enumerate(forms)
    ])
    cases = load_cases(path)
    assert all(c.expected.relevant == {"P1": 1, "P2": 1} for c in cases)
    assert all(c.expected.department is None for c in cases)


def test_blank_lines_and_optional_parts(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text("\n" + json.dumps({"id": 7, "email": {"subject": "s", "body": "b"}}) + "\n\n", encoding="utf-8")
    (case,) = load_cases(path)
    assert case.id == "7" and case.expected == Expected() and dict(case.meta) == {}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (case_record(email={"subject": "s"}), "email.body: missing"),
        (case_record(email={"subject": "", "body": "  "}), "empty subject and an empty body"),
        (case_record(email={"subject": "s", "body": "b", "to": "x"}), "unknown email key"),
        (case_record(colour="red"), "unknown case key"),
        (case_record(id=""), "id: expected a non-empty string"),
        (case_record(expected={"relevant": {"P1": 0}}), "integer >= 1"),
        (case_record(expected={"relevant": ["P1", "P1"]}), "listed twice"),
        (case_record(expected={"relevant": "P1"}), "expected a list of ids"),
        (case_record(expected={"department": 3}), "expected a string"),
        (case_record(meta=["x"]), "meta must be an object"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path: Path, line: object, message: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [case_record("ok"), line])
    with pytest.raises(EvalError, match=message) as info:
        load_cases(path)
    assert f"{path}:2" in str(info.value)


def test_duplicate_id_is_an_error(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "dup.jsonl", [case_record("x"), case_record("y"), case_record("x")])
    with pytest.raises(EvalError, match=r"dup.jsonl:3: duplicate case id 'x' \(first on line 1\)"):
        load_cases(path)


def test_empty_or_missing_cases_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(EvalError, match="no cases"):
        load_cases(tmp_path / "empty.jsonl")
    with pytest.raises(EvalError, match="not found"):
        load_cases(tmp_path / "nope.jsonl")


def test_project_sample_emails_load() -> None:
    cases = jsonl(ROOT / "data" / "sample_emails.jsonl")
    assert len(cases) >= 10
    assert {c.expected.department for c in cases} <= set(DEFAULT_DEPARTMENTS)
    assert all(c.email.id == c.id and (c.email.subject or c.email.body) for c in cases)


# ---------------------------------------------------------------- mappings


def test_load_mapping_checks_values_and_targets(tmp_path: Path) -> None:
    good = tmp_path / "m.toml"
    good.write_text('A = "orders"\nB = " general "\n', encoding="utf-8")
    assert load_mapping(good, DEFAULT_DEPARTMENTS) == {"A": "orders", "B": "general"}
    typo = tmp_path / "typo.toml"
    typo.write_text('A = "shiping"\n', encoding="utf-8")
    with pytest.raises(EvalError, match=r"typo.toml: maps to unknown department\(s\) shiping"):
        load_mapping(typo, DEFAULT_DEPARTMENTS)
    nested = tmp_path / "nested.toml"
    nested.write_text('[A]\nx = "orders"\n', encoding="utf-8")
    with pytest.raises(EvalError, match="'A' must map to a department name"):
        load_mapping(nested)


@pytest.mark.parametrize("name", ["bitext.toml", "hint3_curekart.toml"])
def test_shipped_mappings_target_default_departments(name: str) -> None:
    mapping = load_mapping(EVAL_DIR / "mappings" / name, DEFAULT_DEPARTMENTS)
    assert len(mapping) >= 11


def test_mapping_coverage_error_names_label_and_file(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "b.csv", ["utterance", "intent", "category"],
                     [["where is my stuff", "track_order", "ORDER"], ["send me a bill", "get_invoice", "INVOICE"]])
    mapping = tmp_path / "partial.toml"
    mapping.write_text('ORDER = "orders"\n', encoding="utf-8")
    with pytest.raises(EvalError, match=r"partial.toml does not map label\(s\) INVOICE found in .*b.csv"):
        bitext(data, mapping)


# ---------------------------------------------------------------- adapters


def test_bitext_adapter(tmp_path: Path) -> None:
    header = ["utterance", "intent", "entity_type", "entity_value", "start_offset", "end_offset", "category", "tags"]
    data = write_csv(tmp_path / "bitext.csv", header, [
        ["i want to stop order 12", "cancel_order", "order_id", "12", "20", "22", "ORDER", "B"],
        ["  how do refunds work  ", "check_refund_policy", "", "", "", "", "REFUND", "BL"],
    ])
    cases = bitext(data, {"ORDER": "orders", "REFUND": "returns"}, split="train")
    assert [c.expected.department for c in cases] == ["orders", "returns"]
    assert cases[1].email.body == "how do refunds work" and cases[1].email.subject == ""
    assert dict(cases[0].meta) == {"intent": "cancel_order", "category": "ORDER"}
    assert [c.id for c in cases] == ["bitext-train-0001", "bitext-train-0002"]
    assert {c.split for c in cases} == {"train"}
    assert cases[0].email.source == f"{data}:2"


def test_bitext_adapter_rejects_bad_files(tmp_path: Path) -> None:
    wrong = write_csv(tmp_path / "w.csv", ["text", "category"], [["hi", "ORDER"]])
    with pytest.raises(EvalError, match="missing column"):
        bitext(wrong, {"ORDER": "orders"})
    empty = write_csv(tmp_path / "e.csv", ["utterance", "intent", "category"],
                      [["ok", "x", "ORDER"], [" ", "x", "ORDER"]])
    with pytest.raises(EvalError, match=r"e.csv:3: empty utterance"):
        bitext(empty, {"ORDER": "orders"})


def hint3_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "h.csv", ["sentence", "label"], [
        ["is my parcel coming today", "DELAY_IN_PARCEL"],
        ["good morning", "NO_NODES_DETECTED"],
        ["which protein should I take", "RECOMMEND_PRODUCT"],
    ])


def test_hint3_department_level(tmp_path: Path) -> None:
    mapping = {"DELAY_IN_PARCEL": "shipping", "RECOMMEND_PRODUCT": "products"}
    cases = hint3(hint3_csv(tmp_path), mapping)
    assert [c.expected.department for c in cases] == ["shipping", "out_of_scope", "products"]
    assert [c.meta["label"] for c in cases] == ["DELAY_IN_PARCEL", "NO_NODES_DETECTED", "RECOMMEND_PRODUCT"]
    with pytest.raises(EvalError, match="RECOMMEND_PRODUCT"):
        hint3(hint3_csv(tmp_path), {"DELAY_IN_PARCEL": "shipping"})
    with pytest.raises(EvalError, match="needs a label -> department mapping"):
        hint3(hint3_csv(tmp_path))


def test_hint3_label_level(tmp_path: Path) -> None:
    cases = hint3(hint3_csv(tmp_path), level="label")
    assert [c.expected.department for c in cases] == ["DELAY_IN_PARCEL", "out_of_scope", "RECOMMEND_PRODUCT"]
    assert "department" not in cases[0].meta
    mapped = hint3(hint3_csv(tmp_path), {"DELAY_IN_PARCEL": "shipping", "RECOMMEND_PRODUCT": "products"}, "label")
    assert mapped[0].expected.department == "DELAY_IN_PARCEL" and mapped[0].meta["department"] == "shipping"


def test_epqa_adapter(tmp_path: Path) -> None:
    header = ["qid", "question", "ASIN", "candidate", "source", "qa_pair_id", "title", "label", "answer"]
    rows = [
        ["5", "is it waterproof?", "B01", "rated ipx7 for swimming", "bullet", "1", "Sport Watch", "2", "Yes, IPX7."],
        ["5", "is it waterproof?", "B01", "i wore it in the rain", "review", "2", "Sport Watch", "1", "Rain is fine."],
        ["5", "is it waterproof?", "B01", "strap is silicone", "attribute", "3", "Sport Watch", "0", ""],
        ["5", "is it waterproof?", "B01", "", "description", "4", "Sport Watch", "0", ""],
        ["9", "strap size?", "B01", "strap is silicone", "attribute", "5", "Sport Watch", "1", "It is silicone."],
        ["9", "strap size?", "B01", "fits 140-210 mm wrists", "bullet", "6", "Sport Watch", "2", "140 to 210 mm."],
        ["9", "strap size?", "B01", "fits 140-210 mm wrists", "bullet", "7", "Sport Watch", "2", "Fits most."],
        ["11", "does it come with a case?", "B02", "a sturdy lens", "bullet", "8", "Camera", "0", ""],
    ]
    cases, passages = epqa(write_csv(tmp_path / "dev.csv", header, rows))
    assert [c.id for c in cases] == ["epqa-5", "epqa-9", "epqa-11"]
    by_text = {p.text: p for p in passages}
    # one passage per distinct (product, text); the empty candidate is dropped; the title is prefixed
    assert sorted(by_text) == sorted(["Sport Watch\nrated ipx7 for swimming", "Sport Watch\ni wore it in the rain",
                                      "Sport Watch\nstrap is silicone", "Sport Watch\nfits 140-210 mm wrists",
                                      "Camera\na sturdy lens"])
    assert len({p.passage_id for p in passages}) == len(passages)
    assert by_text["Camera\na sturdy lens"].product_id == "B02"
    q5, q9, q11 = cases
    ids = {t.split("\n")[1]: p.passage_id for t, p in by_text.items()}
    assert dict(q5.expected.relevant) == {ids["rated ipx7 for swimming"]: 2, ids["i wore it in the rain"]: 1}
    # the same passage is graded per question: not relevant to q5, relevant (1) to q9
    assert dict(q9.expected.relevant) == {ids["strap is silicone"]: 1, ids["fits 140-210 mm wrists"]: 2}
    assert q5.expected.reference_reply == "Yes, IPX7."
    assert q9.expected.reference_reply == "140 to 210 mm."  # first of the best-graded answers
    assert q9.meta["answers"] == ["It is silicone.", "140 to 210 mm.", "Fits most."]
    assert q11.expected.relevant == {} and q11.expected.reference_reply is None
    assert q5.email.body == "is it waterproof?" and q5.email.subject == "Question about Sport Watch"
    assert q5.expected.department == "products"
    assert q5.meta["asin"] == "B01" and q5.meta["title"] == "Sport Watch"
    assert q5.meta["sources"][ids["rated ipx7 for swimming"]] == "bullet"


# ---------------------------------------------------------------- eval definitions


def test_load_eval_set_from_jsonl(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "held_out.jsonl", [case_record("a"), case_record("b")])
    eval_set = load_eval_set(path)
    assert eval_set.name == "held_out" and [c.id for c in eval_set.cases] == ["a", "b"]
    assert eval_set.train == [] and eval_set.definition is None and eval_set.passages is None


def test_definition_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "h").mkdir(parents=True)
    hint3_csv(data_dir / "h")
    defs = tmp_path / "defs"
    (defs / "mappings").mkdir(parents=True)
    (defs / "mappings" / "m.toml").write_text(
        'DELAY_IN_PARCEL = "shipping"\nRECOMMEND_PRODUCT = "products"\n', encoding="utf-8")
    write_lines(defs / "local.jsonl", [case_record("z")])
    (defs / "h.toml").write_text('adapter = "hint3"\npath = "h/h.csv"\ntrain_path = "h/h.csv"\n'
                                 'mapping = "mappings/m.toml"\n', encoding="utf-8")
    (defs / "local.toml").write_text('name = "mine"\nadapter = "jsonl"\npath = "./local.jsonl"\n', encoding="utf-8")

    eval_set = load_eval_set(defs / "h.toml", data_dir=data_dir)
    assert eval_set.name == "h" and len(eval_set.cases) == 3 and len(eval_set.train) == 3
    assert eval_set.mapping == defs / "mappings" / "m.toml" and eval_set.definition == defs / "h.toml"
    assert {c.split for c in eval_set.train} == {"train"}

    monkeypatch.setenv("MAILCASCADE_DATA_DIR", str(data_dir))
    assert len(load_eval_set(defs / "h.toml").cases) == 3

    local = load_eval_set(defs / "local.toml", data_dir=tmp_path / "elsewhere")
    assert local.name == "mine" and [c.id for c in local.cases] == ["z"]

    with pytest.raises(EvalError, match="--data-dir") as info:
        load_eval_set(defs / "h.toml", data_dir=tmp_path / "elsewhere")
    assert str(tmp_path / "elsewhere" / "h" / "h.csv") in str(info.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('adapter = "nope"\npath = "x.csv"\n', "adapter must be one of"),
        ('adapter = "bitext"\npath = "x.csv"\nmapping = "m.toml"\nfoo = "1"\n', "unknown key"),
        ('adapter = "bitext"\npath = "x.csv"\n', "needs mapping"),
        ('adapter = "bitext"\npath = "x.csv"\nmapping = "m.toml"\nlevel = "label"\n', "only hint3"),
        ('adapter = "epqa"\npath = "x.csv"\nmapping = "m.toml"\n', "takes no mapping"),
        ('adapter = "bitext"\npath = "x.csv"\nmapping = "gone.toml"\n', "mapping = 'gone.toml': file not found"),
        ('adapter = "bitext"\nmapping = "m.toml"\n', "path is required"),
    ],
)
def test_bad_definitions(tmp_path: Path, body: str, message: str) -> None:
    (tmp_path / "m.toml").write_text('ORDER = "orders"\n', encoding="utf-8")
    write_csv(tmp_path / "x.csv", ["utterance", "intent", "category"], [["hi", "x", "ORDER"]])
    (tmp_path / "d.toml").write_text(body, encoding="utf-8")
    with pytest.raises(EvalError, match=message):
        load_eval_set(tmp_path / "d.toml", data_dir=tmp_path)


def test_expected_departments_must_be_configured(tmp_path: Path) -> None:
    write_csv(tmp_path / "x.csv", ["utterance", "intent", "category"], [["hi", "x", "ORDER"]])
    (tmp_path / "m.toml").write_text('ORDER = "sales"\n', encoding="utf-8")
    (tmp_path / "d.toml").write_text('adapter = "bitext"\npath = "x.csv"\nmapping = "m.toml"\n', encoding="utf-8")
    with pytest.raises(EvalError, match=r"department\(s\) sales are not configured"):
        load_eval_set(tmp_path / "d.toml", data_dir=tmp_path)
    cases = [make_case("a", subject="", body="b", expected=Expected(department="orders"))]
    eval_set = load_eval_set(write_lines(tmp_path / "c.jsonl", [case_to_json(cases[0])]))
    check_departments(eval_set, DEFAULT_DEPARTMENTS)
    with pytest.raises(EvalError, match="orders"):
        check_departments(eval_set, ("billing",))


def test_sample_definition_loads_project_data() -> None:
    eval_set = load_eval_set(EVAL_DIR / "sample.toml", data_dir="/nonexistent")
    assert eval_set.name == "sample" and len(eval_set.cases) == len(load_cases(ROOT / "data" / "sample_emails.jsonl"))


def test_label_level_config_covers_every_hint3_label() -> None:
    settings = load_settings(EVAL_DIR / "configs" / "hint3_curekart_labels.toml", env={})
    mapping = load_mapping(EVAL_DIR / "mappings" / "hint3_curekart.toml")
    assert set(settings.department_names) == (set(mapping) - {"NO_NODES_DETECTED"}) | {"out_of_scope"}


# ---------------------------------------------------------------- the real public data


@needs_shared_data
def test_real_bitext_test() -> None:
    eval_set = load_eval_set(EVAL_DIR / "bitext_test.toml", data_dir=SHARED_DATA)
    assert len(eval_set.cases) == 810 and len(eval_set.train) == 6480
    assert {c.expected.department for c in eval_set.cases} == set(DEFAULT_DEPARTMENTS) - {"products", "out_of_scope"}
    assert len({c.id for c in eval_set.cases}) == 810


@needs_shared_data
def test_real_hint3_curekart() -> None:
    dept = load_eval_set(EVAL_DIR / "hint3_curekart_test.toml", data_dir=SHARED_DATA)
    assert len(dept.cases) == 991 and len(dept.train) == 599
    counts = Counter(c.expected.department for c in dept.cases)
    assert counts["out_of_scope"] == 532
    assert set(counts) <= set(DEFAULT_DEPARTMENTS)
    labels = load_eval_set(EVAL_DIR / "hint3_curekart_test_labels.toml", data_dir=SHARED_DATA)
    assert labels.level == "label" and labels.config is not None
    label_counts = Counter(c.expected.department for c in labels.cases)
    assert label_counts["out_of_scope"] == 532 and len(label_counts) == 21
    assert [c.meta["label"] for c in labels.cases] == [c.meta["label"] for c in dept.cases]


@needs_shared_data
def test_real_epqa_dev() -> None:
    eval_set = load_eval_set(EVAL_DIR / "epqa_dev.toml", data_dir=SHARED_DATA)
    assert len(eval_set.cases) == 977 and eval_set.passages is not None
    passage_ids = {p.passage_id for p in eval_set.passages}
    assert len(passage_ids) == len(eval_set.passages) > 9000
    graded = [c for c in eval_set.cases if c.expected.relevant]
    assert len(graded) > 0.9 * len(eval_set.cases)
    assert all(set(c.expected.relevant) <= passage_ids for c in graded)
    assert any(2 in c.expected.relevant.values() for c in graded)
    assert all(c.expected.reference_reply for c in graded)
    assert len({c.meta["asin"] for c in eval_set.cases}) == 888
