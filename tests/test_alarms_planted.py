"""Alarms on real runs over eval sets built at test time from the public Bitext data, with PLANTED problems.

Each test plants one problem, checks that its alarm fires and names >= 80% of the planted case ids with <= 20%
others, and that the same set without the plant stays quiet. Eval sets are written to tmp_path (never
committed); the data is read by path from the shared folder. The embedder is the deterministic HashEmbedder,
except for leakage (the real MiniLM, whose similarities the near-copy threshold is set for).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from bigrun import BITEXT
from fakes import HashEmbedder, last_user
from fakeserver import FakeServer, Reply
from mailcascade.config import Settings, StoreSettings
from mailcascade.eval.diagnose import Alarm, difficulty, label_noise, worse_on_easy
from mailcascade.eval.diagnose.leakage import tuned_on_eval
from mailcascade.eval.evalset import load_eval_set
from mailcascade.eval.runner import EvalOptions, read_records, run_eval
from mailcascade.stages.embed_route import email_text
from test_eval_runner import settings_for

ROOT = Path(__file__).resolve().parents[1]
MAPPING = ROOT / "eval" / "mappings" / "bitext.toml"
DEPARTMENT = {"ACCOUNT": "account", "ORDER": "orders", "REFUND": "returns", "PAYMENT": "billing",
              "INVOICE": "billing", "DELIVERY": "shipping", "SHIPPING_ADDRESS": "shipping", "CONTACT": "general",
              "FEEDBACK": "general", "NEWSLETTER": "account", "CANCELLATION_FEE": "billing"}
#: one category per department, to plant a gold label of another department
CATEGORY_OF = {"account": "ACCOUNT", "orders": "ORDER", "returns": "REFUND", "billing": "PAYMENT",
               "shipping": "DELIVERY", "general": "CONTACT"}

pytestmark = pytest.mark.skipif(not BITEXT.is_dir(), reason="the shared Bitext data is not there")


def _rows(name: str) -> list[dict[str, str]]:
    with (BITEXT / name).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _pick(rows: Sequence[dict[str, str]], per_category: int, rng: random.Random) -> list[dict[str, str]]:
    by: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by.setdefault(r["category"], []).append(r)
    return [r for c in sorted(by) for r in rng.sample(by[c], min(per_category, len(by[c])))]


def _write(path: Path, rows: Sequence[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


class Planted:
    """A Bitext eval set in a folder: 40 train and 20 test utterances per category (440 / 220)."""

    def __init__(self, folder: Path, train: int = 40, test: int = 20) -> None:
        rng = random.Random(0)
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.train = _pick(_rows("Bitext_Sample_Customer_Service_Training_Dataset.csv"), train, rng)
        self.test = _pick(_rows("Bitext_Sample_Customer_Service_Testing_Dataset.csv"), test, rng)
        _write(folder / "train.csv", self.train)

    def definition(self, name: str, test: Sequence[dict[str, str]] | None = None, extra: str = "") -> Path:
        _write(self.folder / f"{name}.csv", list(test or self.test))
        path = self.folder / f"{name}.toml"
        path.write_text(f'name = "planted"\nadapter = "bitext"\npath = "{self.folder / (name + ".csv")}"\n'
                        f'train_path = "{self.folder / "train.csv"}"\nmapping = "{MAPPING}"\n{extra}',
                        encoding="utf-8")
        return path

    def ids(self) -> list[str]:
        return [f"bitext-test-{n:04d}" for n in range(1, len(self.test) + 1)]


def embedding_settings(tmp_path: Path, examples: Path | None = None) -> Settings:
    s = Settings()
    # no out-of-scope threshold: the planted data has no out-of-scope traffic, and the alarms are the subject here
    route = dataclasses.replace(s.route, strategy="embedding", examples_path=str(examples) if examples else "",
                                oos_calibration="off")
    return s.replace(store=StoreSettings(path=str(tmp_path / "log.db")), route=route)


def run_records(definition: Path, out: Path, settings: Settings, cache: Path,
                options: EvalOptions | None = None) -> list[dict[str, Any]]:
    run = run_eval(load_eval_set(definition), out, options or EvalOptions(progress=False, stages=("route",),
                                                                          concurrency=4),
                   settings=settings, embedder=HashEmbedder(dim=512), cache_dir=cache)
    return read_records(run / "cases.jsonl").records


def check_names(alarm: Alarm, planted: set[str]) -> None:
    named = set(alarm.cases)
    assert len(named & planted) >= 0.8 * len(planted), (len(named & planted), len(planted))
    assert len(named - planted) <= 0.2 * len(named), (len(named - planted), len(named))


def the(alarms: Sequence[Alarm], name: str) -> Alarm:
    found = [a for a in alarms if a.name == name]
    assert len(found) == 1, [a.name for a in alarms]
    return found[0]


def oracle(truth: dict[str, str]) -> Callable[[dict[str, Any]], Reply]:
    """A strong LLM router: answers each email's true department (from the clean data)."""
    texts = sorted(truth, key=len, reverse=True)

    def answer(body: dict[str, Any]) -> Reply:
        user = " ".join(last_user(body).split())
        dept = next((truth[t] for t in texts if t in user), "general")
        return Reply(json.dumps({"department": dept, "confidence": 0.9, "reason": "oracle"}))
    return answer


def test_worse_on_easy_and_label_noise_fire_on_shuffled_gold_labels_of_15_easy_cases(tmp_path: Path) -> None:
    data = Planted(tmp_path / "data")
    truth = {" ".join(r["utterance"].split()): DEPARTMENT[r["category"]] for r in data.test}
    with FakeServer(oracle(truth)) as server:  # type: ignore[arg-type]
        settings = settings_for(server, tmp_path)
        clean = run_records(data.definition("clean"), tmp_path / "clean", settings, tmp_path / "cache")
        # 15 easy cases (by the gold-free difficulty), their gold labels shuffled among departments
        signals = difficulty(clean)
        easy = [i for i, s in zip(data.ids(), (signals[i] for i in data.ids()), strict=True) if s["easy"]]
        planted_ids = random.Random(3).sample(easy, 15)
        position = {case_id: n for n, case_id in enumerate(data.ids())}
        test = [dict(r) for r in data.test]
        depts = sorted(CATEGORY_OF)
        for k, case_id in enumerate(sorted(planted_ids)):
            row = test[position[case_id]]
            true = DEPARTMENT[row["category"]]
            row["category"] = CATEGORY_OF[[d for d in depts if d != true][k % 5]]
        hurt = run_records(data.definition("hurt", test), tmp_path / "hurt", settings, tmp_path / "cache")
    planted = set(planted_ids)
    assert worse_on_easy(clean) == [] and label_noise(clean) == []
    alarm = the(worse_on_easy(hurt), "worse_on_easy")
    check_names(alarm, planted)
    assert alarm.data["difficulty_from"] == ["embedding_logreg", "embedding_knn"]  # the system is an LLM
    noise = the(label_noise(hurt), "label_noise")  # the system and an independent baseline agree against gold
    check_names(noise, planted)
    assert noise.data["second_opinion"] == "embedding_logreg" and "embedding_logreg" in noise.title


def swapped_examples(data: Planted, path: Path, swap: dict[str, str]) -> Path:
    es = load_eval_set(data.definition("clean"))
    path.write_text("".join(json.dumps({"text": email_text(c.email),
                                        "department": swap.get(str(c.expected.department),
                                                               str(c.expected.department))}) + "\n"
                            for c in es.train), encoding="utf-8")
    return path


def test_worse_on_easy_fires_on_router_examples_with_four_labels_swapped(tmp_path: Path) -> None:
    data = Planted(tmp_path / "data")
    definition = data.definition("clean")
    cache = tmp_path / "cache"
    swap = {"orders": "billing", "billing": "orders", "shipping": "account", "account": "shipping"}
    honest = swapped_examples(data, tmp_path / "honest.jsonl", {})
    clean = run_records(definition, tmp_path / "clean", embedding_settings(tmp_path, honest), cache)
    hurt = run_records(definition, tmp_path / "hurt",
                       embedding_settings(tmp_path, swapped_examples(data, tmp_path / "swapped.jsonl", swap)), cache)
    assert worse_on_easy(clean) == []
    alarm = the(worse_on_easy(hurt), "worse_on_easy")
    planted = {r["id"] for r in hurt if r["expected"]["department"] in swap}
    check_names(alarm, planted)
    assert alarm.data["system"] == "knn" and alarm.data["difficulty_from"] == ["embedding_logreg"]
    assert set(alarm.data["departments"]) <= set(swap)


def test_label_noise_with_the_embedding_router_as_the_system_asks_an_independent_learner(tmp_path: Path) -> None:
    data = Planted(tmp_path / "data")
    cache = tmp_path / "cache"
    settings = embedding_settings(tmp_path)  # the router learns from the train split: the k-NN baseline's twin
    clean = run_records(data.definition("clean"), tmp_path / "clean", settings, cache)
    # plant label errors on 12 cases both learners would route alike and confidently
    signals = {r["id"]: r for r in clean}
    candidates = [i for i in data.ids() if signals[i]["baselines"]["embedding_logreg"] ==
                  signals[i]["route"]["department"] == signals[i]["expected"]["department"]
                  and (signals[i]["baseline_confidence"]["embedding_logreg"] or 0) >= 0.6]
    planted = set(random.Random(5).sample(candidates, 12))
    test = [dict(r) for r in data.test]
    for n, case_id in enumerate(data.ids()):
        if case_id in planted:
            true = DEPARTMENT[test[n]["category"]]
            test[n]["category"] = CATEGORY_OF["general" if true != "general" else "orders"]
    hurt = run_records(data.definition("hurt", test), tmp_path / "hurt", settings, cache)
    # the k-NN baseline is the system itself: as a "second opinion" it lists the system's own errors
    twin = label_noise(clean, baseline_key="embedding_knn", min_confidence=0.0)
    errors = {r["id"] for r in clean if not r["scores"]["route_correct"]}
    assert twin and set(twin[0].cases) <= errors and len(twin[0].cases) >= 0.8 * len(errors)
    # the independent learner on the clean set: at most a few genuinely ambiguous cases, as info, never a warning
    assert all(a.level == "info" and len(a.cases) <= 0.02 * len(clean) for a in label_noise(clean))
    alarm = the(label_noise(hurt), "label_noise")
    check_names(alarm, planted)
    assert alarm.data["second_opinion"] == "embedding_logreg" and alarm.data["system"] == "knn"
    assert "embedding_logreg" in alarm.title


def test_baseline_confidence_is_recorded_and_old_records_stay_readable(tmp_path: Path) -> None:
    data = Planted(tmp_path / "data", train=10, test=3)
    records = run_records(data.definition("clean"), tmp_path / "run", embedding_settings(tmp_path),
                          tmp_path / "cache")
    for r in records:
        assert set(r["baselines"]) == {"majority", "embedding_knn", "embedding_logreg", "always_out_of_scope"}
        conf = r["baseline_confidence"]
        assert set(conf) == {"embedding_knn", "embedding_logreg"}
        assert all(0.0 < v <= 1.0 for v in conf.values())
    old = [{k: v for k, v in r.items() if k != "baseline_confidence"} for r in records]
    assert all(s["basis"] == "agreement" for s in difficulty(old).values())  # missing confidence = None
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["baseline_source"]["embedding_logreg"] == "train split"


@pytest.mark.parametrize("where", ["definition", "option"])
def test_tuned_on_eval_fires_from_the_definition_or_the_option(tmp_path: Path, where: str) -> None:
    data = Planted(tmp_path / "data", train=5, test=2)
    extra = 'tuned_on = "eval"\n' if where == "definition" else ""
    options = EvalOptions(progress=False, stages=("route",), tuned_on="eval" if where == "option" else "")
    run_records(data.definition("clean", extra=extra), tmp_path / "run", embedding_settings(tmp_path),
                tmp_path / "cache", options)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    alarm = the(tuned_on_eval(info), "tuned_on_eval")
    assert alarm.data["from"] == ("eval definition" if where == "definition" else "--tuned-on-eval")
    run_records(data.definition("quiet"), tmp_path / "quiet", embedding_settings(tmp_path), tmp_path / "cache")
    assert not [a for a in tuned_on_eval(json.loads((tmp_path / "quiet" / "run.json").read_text()))
                if a.name == "tuned_on_eval"]


def test_an_eval_definition_with_a_bad_tuned_on_is_refused(tmp_path: Path) -> None:
    from mailcascade.errors import EvalError

    data = Planted(tmp_path / "data", train=5, test=2)
    with pytest.raises(EvalError, match="tuned_on must be one of"):
        load_eval_set(data.definition("bad", extra='tuned_on = "vibes"\n'))
    assert load_eval_set(data.definition("ok", extra='tuned_on = "test"\n')).tuned_on == "test"


#: swaps that keep the meaning (Bitext itself uses order / purchase interchangeably)
SYNONYMS = {"want": "would like", "help": "assist", "can": "could", "could": "can", "need": "require",
            "problem": "issue", "issue": "problem", "order": "purchase", "purchase": "order"}


def paraphrase(text: str) -> str:
    """A light paraphrase: the first word with a synonym swapped, and "please" at the end."""
    words = text.split()
    for i, word in enumerate(words):
        if word.lower() in SYNONYMS:
            words[i] = SYNONYMS[word.lower()]
            break
    return " ".join(words) + " please"


@pytest.mark.slow
def test_copied_and_paraphrased_cases_in_the_router_examples_raise_leakage(tmp_path: Path) -> None:
    from mailcascade.catalog import Embedder
    from mailcascade.config import EmbeddingSettings
    from mailcascade.eval.diagnose.run import Diagnoser

    data = Planted(tmp_path / "data")
    embedder = Embedder(EmbeddingSettings())  # the real MiniLM: the near-copy threshold is set for it
    cache = tmp_path / "cache"

    def leaks(name: str, test: Sequence[dict[str, str]], extra: Sequence[dict[str, str]]) -> list[Alarm]:
        es = load_eval_set(data.definition(name, test))
        examples = tmp_path / f"{name}.jsonl"
        examples.write_text("".join(json.dumps({"text": email_text(c.email), "department": c.expected.department})
                                    + "\n" for c in es.train) + "".join(json.dumps(r) + "\n" for r in extra))
        run_records(data.definition(name, test), tmp_path / name, embedding_settings(tmp_path, examples), cache)
        return Diagnoser(tmp_path / name, embedder=embedder, cache_dir=cache).leaks()

    # Bitext is generated from templates: many test utterances have near copies in its train split already.
    # The clean set is the test sample without them; it must raise no leakage alarm.
    natural = {c for a in leaks("natural", data.test, []) for c in a.cases}
    position = dict(zip(data.ids(), data.test, strict=True))
    clean_rows = [row for case_id, row in position.items() if case_id not in natural]
    assert len(clean_rows) >= 100
    assert leaks("clean", clean_rows, []) == []
    clean_ids = [f"bitext-test-{n:04d}" for n in range(1, len(clean_rows) + 1)]
    picked = random.Random(11).sample(range(len(clean_rows)), 30)
    copied = [{"text": clean_rows[i]["utterance"], "department": DEPARTMENT[clean_rows[i]["category"]]}
              for i in picked[:15]]
    paraphrased = [{"text": paraphrase(clean_rows[i]["utterance"]), "department": DEPARTMENT[clean_rows[i]["category"]]}
                   for i in picked[15:]]
    alarms = leaks("planted", clean_rows, copied + paraphrased)
    assert {a.name for a in alarms} <= {"exact_duplicates", "near_duplicates"}
    exact = the(alarms, "exact_duplicates")
    check_names(exact, {clean_ids[i] for i in picked[:15]})
    # copies and paraphrases together, as exact copies or (the paraphrases) as a case inside a longer example or
    # a near copy; and most of the paraphrases themselves
    named = {c for a in alarms for c in a.cases}
    check_names(Alarm("leakage", "warn", "", "", tuple(sorted(named)), {}), {clean_ids[i] for i in picked})
    assert len(named & {clean_ids[i] for i in picked[15:]}) >= 0.8 * 15


@pytest.mark.slow
def test_cases_copied_into_a_trained_routers_examples_raise_leakage(tmp_path: Path) -> None:
    """A trained router learns from its own examples (saved in its model_dir), not from the eval set's train split:
    copies planted there are found, and the same router without them stays quiet."""
    from mailcascade.catalog import Embedder
    from mailcascade.config import EmbeddingSettings
    from mailcascade.eval.diagnose.run import Diagnoser
    from mailcascade.router.train import TrainOptions, train

    data = Planted(tmp_path / "data", train=10, test=20)
    embedder = Embedder(EmbeddingSettings())
    base = [(email_text(c.email), c.expected.department or "")
            for c in load_eval_set(data.definition("train-only")).train]
    planted = random.Random(5).sample(range(len(data.test)), 15)
    departments = sorted({d for _, d in base})

    def leaks(name: str, extra: Sequence[tuple[str, str]]) -> list[Alarm]:
        examples = [*base, *extra]
        model = tmp_path / f"router-{name}"
        train([t for t, _ in examples], [d for _, d in examples], model, embedder,
              options=TrainOptions(epochs=0, folds=0))  # the head on the shipped encoder: seconds, not minutes
        s = Settings()
        settings = s.replace(
            departments=tuple(d for d in s.departments if d.name in departments),
            store=StoreSettings(path=str(tmp_path / "log.db")),
            route=dataclasses.replace(s.route, strategy="trained", model_dir=str(model)))
        run_records(data.definition(name), tmp_path / name, settings, tmp_path / "cache")
        return Diagnoser(tmp_path / name, embedder=embedder, cache_dir=tmp_path / "cache").leaks()

    clean = leaks("clean", [])
    natural = {c for a in clean for c in a.cases}  # Bitext's templates: some test cases have near copies in train
    picked = [i for i in planted if data.ids()[i] not in natural]
    assert len(picked) >= 10
    alarms = leaks("planted", [(data.test[i]["utterance"], DEPARTMENT[data.test[i]["category"]]) for i in picked])
    exact = the(alarms, "exact_duplicates")
    check_names(Alarm("leakage", "warn", "", "", tuple(sorted(set(exact.cases) - natural)), {}),
                {data.ids()[i] for i in picked})
    assert not [a for a in clean if a.name == "exact_duplicates"]


def diagnosis_of(run: Path, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    from mailcascade.eval.diagnose import diagnose_records

    info = json.loads((run / "run.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    texts = {r["id"]: r["email"]["body"] for r in records}
    return list(diagnose_records(records, metrics, info["labels"], texts=texts)["alarms"])


def test_a_degenerate_label_set_raises_degenerate_labels_and_the_clean_set_only_explained_warnings(
        tmp_path: Path) -> None:
    data = Planted(tmp_path / "data")
    settings = embedding_settings(tmp_path)
    clean = run_records(data.definition("clean"), tmp_path / "clean", settings, tmp_path / "cache")
    alarms = diagnosis_of(tmp_path / "clean", clean)
    # the clean set: no data-problem alarm; a warning may only be a weak slice of the system, and each case it
    # names is a case of that slice the system routed wrong (its row in the report shows why)
    by_id = {r["id"]: r for r in clean}
    for alarm in alarms:
        assert alarm["level"] != "warn" or alarm["name"] == "weak_slice", alarm["title"]
        if alarm["name"] == "weak_slice":
            assert alarm["cases"] and all(by_id[c]["scores"]["route_correct"] is False for c in alarm["cases"])
    assert "degenerate_labels" not in {a["name"] for a in alarms}
    # the degenerate set: every gold label is orders (the test sample filtered to one intent's categories)
    orders = [r for r in data.test if DEPARTMENT[r["category"]] == "orders"]
    degenerate = run_records(data.definition("degenerate", orders), tmp_path / "degenerate", settings,
                             tmp_path / "cache")
    found = [a for a in diagnosis_of(tmp_path / "degenerate", degenerate) if a["name"] == "degenerate_labels"]
    assert len(found) == 1 and found[0]["data"]["department"] == "orders" and found[0]["data"]["share"] == 1.0
