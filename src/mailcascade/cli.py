"""The command line: parses arguments and calls library functions. No logic lives here."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from mailcascade.config import Settings, load_settings
from mailcascade.errors import MailcascadeError
from mailcascade.interrupt import Terminated, ignore_signals, raise_terminated, run_in_worker


class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line, like every other error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"mailcascade: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code. Every error a user can cause is one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    _log_to_stderr(args.log_level)
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        code: int = args.func(args)
        return code
    except MailcascadeError as exc:
        print(f"mailcascade: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        ignore_signals()
        print("mailcascade: terminated" if isinstance(exc, Terminated) else "mailcascade: interrupted",
              file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except BrokenPipeError:  # `mailcascade config | head`: the reader left; say nothing more
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        where = f" {exc.filename}:" if exc.filename else ""
        print(f"mailcascade: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if os.environ.get("MAILCASCADE_DEBUG"):
            raise
        print(f"mailcascade: internal error: {type(exc).__name__}: {exc} (a bug: please report it; "
              "MAILCASCADE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 70


def entry() -> None:
    """The console script: `main`, then exit without waiting for work abandoned by an interrupt."""
    code = main()
    with contextlib.suppress(OSError):
        sys.stdout.flush()
        sys.stderr.flush()
    if code in (130, 141, 143):
        os._exit(code)  # a worker may still be inside a long C call; what is finished has been written
    sys.exit(code)


LOG_LEVELS = ("debug", "info", "warning", "error")


def _log_to_stderr(level: str) -> None:
    """The library's log records at `level` and above (default warning: an incomplete failure log, ...) as one
    `mailcascade: LEVEL: message` line each on stderr."""
    logger = logging.getLogger("mailcascade")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("mailcascade: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level.upper())


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="mailcascade", description="Route, retrieve, draft and debug customer email.",
               epilog="exit codes: 0 ok; 1 an error (one line says what to fix); 2 a usage error; "
                      "3 run: some emails failed; 4 run: every email failed; 130/143 interrupted (SIGINT/SIGTERM); "
                      "70 a bug (MAILCASCADE_DEBUG=1 shows the traceback)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="warning",
                   help="log records shown on stderr (default warning; info: server, index and run life cycle; "
                        "debug: each email's outcome). Ids, counts and timings only, never email text")
    sub = p.add_subparsers(metavar="COMMAND")

    run = sub.add_parser("run", help="run the cascade on emails (.eml, .json, .jsonl, .txt, or folders of them)")
    run.add_argument("inputs", nargs="+", metavar="INPUT")
    run.add_argument("--out", default="results.jsonl", help="where to write one JSON record per input "
                     "(default: results.jsonl; - for stdout)")
    run.add_argument("--resume", action="store_true", help="keep the complete records already in --out (or its "
                     ".partial journal, after a killed run) and run only the rest")
    _config_arg(run)
    run.add_argument("--concurrency", type=positive_int, default=None,
                     help="emails in flight at once (default: config)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    _engine_args(run)
    run.set_defaults(func=cmd_run)

    cfg = sub.add_parser("config", help="print the effective configuration as JSON (secrets redacted)")
    _config_arg(cfg)
    cfg.set_defaults(func=cmd_config)

    index = sub.add_parser("index", help="build or inspect the catalogue index")
    isub = index.add_subparsers(metavar="ACTION")
    build = isub.add_parser("build", help="embed the catalogue and build the FAISS index")
    build.add_argument("catalog", nargs="?", help="catalogue file (default: config catalog.path, or the sample)")
    build.add_argument("--kind", choices=["flat", "hnsw"], help="exact (flat) or approximate (hnsw) index")
    _config_arg(build)
    build.set_defaults(func=cmd_index_build)
    status = isub.add_parser("status", help="say whether the saved index matches the catalogue")
    _config_arg(status)
    status.set_defaults(func=cmd_index_status)

    val = sub.add_parser("validate", help="validate raw model outputs against a JSON Schema; one JSON verdict each")
    val.add_argument("inputs", nargs="+", metavar="INPUT", help="files holding one raw output each; - for stdin")
    val.add_argument("--schema", required=True, metavar="FILE", help="JSON Schema file")
    val.add_argument("--finish-reason", metavar="R", help="the model's finish_reason (e.g. length)")
    val.set_defaults(func=cmd_validate)

    fail = sub.add_parser("failures", help="the failure log: funnel per stage, counts and token cost per code")
    _store_args(fail)
    fail.add_argument("--examples", metavar="CODE", help="print stored raw outputs that showed CODE")
    fail.add_argument("--limit", type=positive_int, default=5, help="how many examples (default 5)")
    fail.add_argument("--json", action="store_true", help="print the statistics as JSON")
    fail.set_defaults(func=cmd_failures)
    fsub = fail.add_subparsers(metavar="ACTION")
    replay = fsub.add_parser("replay", help="re-validate stored outputs with the current validator; show changes")
    _store_args(replay)
    replay.add_argument("--all", action="store_true", help="list unchanged verdicts too")
    replay.set_defaults(func=cmd_failures_replay)
    export = fsub.add_parser("export", help="write stored outputs with CODE as validator test fixtures (JSONL)")
    export.add_argument("code")
    export.add_argument("--out", default="tests/corpus/exported", help="folder (default tests/corpus/exported)")
    _store_args(export)
    export.set_defaults(func=cmd_failures_export)

    ev = sub.add_parser("eval", help="run the cascade over a labelled eval set and score every stage")
    ev.add_argument("evalset", metavar="EVALDEF_OR_CASES", help="an eval definition (.toml) or a cases file (.jsonl)")
    ev.add_argument("--out", metavar="DIR", help="run directory (default: runs/NAME-TIMESTAMP)")
    ev.add_argument("--limit", type=positive_int, help="only the first N (selected) cases")
    ev.add_argument("--sample", type=positive_int, metavar="N", help="a random sample of N cases (see --seed)")
    ev.add_argument("--seed", type=int, default=0, help="seed for --sample and the bootstrap (default 0)")
    ev.add_argument("--stages", default=",".join(_STAGES), help="stages to run, comma-separated (default: all)")
    ev.add_argument("--gold", default="", help="upstream outputs taken from the labels: department,hits")
    ev.add_argument("--resume", action="store_true", help="continue a stopped run in --out")
    ev.add_argument("--retry-errors", action="store_true", help="with --resume: also re-run the cases whose model "
                    "call got no answer (timeouts, refused connections, 5xx: stage status error)")
    ev.add_argument("--tuned-on-eval", action="store_true", help="say that settings (a threshold, a prompt) were "
                    "chosen by looking at this eval set: recorded in the run, and diagnose warns about it")
    ev.add_argument("--concurrency", type=positive_int, help="cases in flight at once (default: config)")
    ev.add_argument("--data-dir", metavar="DIR", help="where the public datasets are (default: "
                    "$MAILCASCADE_DATA_DIR or ../shared/data)")
    ev.add_argument("--no-progress", action="store_true")
    _engine_args(ev)
    _config_arg(ev)
    ev.set_defaults(func=cmd_eval)

    rep = sub.add_parser("report", help="rewrite a run's report.html and print its summary")
    rep.add_argument("run", metavar="RUN")
    rep.set_defaults(func=cmd_report)

    cmp_ = sub.add_parser("compare", help="compare two eval runs: metric deltas, per-case flips, prompt/config diffs")
    cmp_.add_argument("run_a", metavar="RUN_A")
    cmp_.add_argument("run_b", metavar="RUN_B")
    cmp_.add_argument("--json", action="store_true", help="print the comparison as JSON")
    cmp_.add_argument("--html", metavar="OUT", help="also write the comparison as one self-contained page: deltas "
                      "with intervals, flipped cases side by side with both runs' outputs, prompt and config diffs")
    cmp_.set_defaults(func=cmd_compare)

    diag = sub.add_parser("diagnose", help="error analysis of a run: alarms, ceiling analysis, ablations, "
                          "learning curves, leakage (stored in metrics.json and the report)")
    diag.add_argument("run", metavar="RUN")
    diag.add_argument("--data-dir", metavar="DIR", help="where the public datasets are (default: as the run)")
    diag.add_argument("--ablation-limit", type=positive_int, default=40, metavar="N",
                      help="cases per model-calling ablation (default 40; ablations share the LLM cache)")
    diag.add_argument("--json", action="store_true", help="print the diagnosis as JSON")
    diag.add_argument("--no-progress", action="store_true")
    diag.set_defaults(func=cmd_diagnose)

    srv = sub.add_parser("serve", help="the HTTP service: POST /v1/emails, /v1/batches, feedback, /metrics "
                         "(needs the serve extra)")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; without API keys "
                     "loopback only)")
    srv.add_argument("--port", type=positive_int, default=8080, help="port (default 8080)")
    _config_arg(srv)
    srv.set_defaults(func=cmd_serve)

    fb = sub.add_parser("feedback", help="the agents' feedback: sent as is, edit distance, reroutes, confusion "
                        "per prompt and model")
    _config_arg(fb)
    fb.add_argument("--db", metavar="FILE", help="the store (default: config store.url or store.path)")
    fb.add_argument("--json", action="store_true", help="print the statistics as JSON")
    fb.set_defaults(func=cmd_feedback)
    fbsub = fb.add_subparsers(metavar="ACTION")
    fbx = fbsub.add_parser("export", help="write the feedback as an eval cases file (agent's department, sent reply)")
    fbx.add_argument("--out", required=True, metavar="FILE", help="cases file to write (JSONL)")
    _config_arg(fbx)
    fbx.add_argument("--db", metavar="FILE", help="the store (default: config store.url or store.path)")
    fbx.set_defaults(func=cmd_feedback_export)

    router = sub.add_parser("router", help="train a router (fine-tuned embeddings + a classifier head)")
    rsub = router.add_subparsers(metavar="ACTION")
    rtrain = rsub.add_parser("train", help="fine-tune the embedding model on labelled examples (SetFit-style), fit "
                             "a head, calibrate the out-of-scope threshold on the examples; save it under --out")
    rtrain.add_argument("examples", metavar="EXAMPLES",
                        help='JSONL of {"text", "department"} (like route.examples_path), or an eval definition '
                             "(.toml) whose train split to learn from")
    rtrain.add_argument("--out", required=True, metavar="DIR", help="where to save the router (route.model_dir)")
    rtrain.add_argument("--epochs", type=int, choices=range(0, 101), default=1, metavar="N",
                        help="passes over the sentence pairs (default 1; 0: no fine-tuning, head only)")
    rtrain.add_argument("--pairs", type=positive_int, default=2, metavar="N",
                        help="rounds of one same-label and one other-label pair per example (default 2)")
    rtrain.add_argument("--folds", type=int, default=3, metavar="N",
                        help="label-held-out folds for the out-of-scope threshold, each fine-tunes an encoder "
                             "(default 3; 0: no threshold)")
    rtrain.add_argument("--threads", type=positive_int, default=1,
                        help="torch CPU threads while training (default 1: on a busy 2-core machine one thread "
                             "trained 9x faster than two)")
    rtrain.add_argument("--data-dir", metavar="DIR", help="where an eval definition's data lives")
    _config_arg(rtrain)
    rtrain.set_defaults(func=cmd_router_train)

    model = sub.add_parser("model", help="the embedded local model server")
    msub = model.add_subparsers(metavar="ACTION")
    serve = msub.add_parser("serve", help="run the llama.cpp server with local_server.model until Ctrl-C")
    _config_arg(serve)
    serve.set_defaults(func=cmd_model_serve)
    return p


_STAGES = ("route", "retrieve", "draft")


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="mailcascade.toml (default: ./mailcascade.toml if present, "
                   "else built-in defaults; environment overrides either)")


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="local: this process (default); "
                   "ray: a Ray Data actor pool, one pipeline per CPU (needs the ray extra)")
    p.add_argument("--ray-address", metavar="ADDRESS", help="with --engine ray: an existing cluster "
                   "(e.g. ray://HOST:10001); default: a local Ray started for this command")


def _store_args(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument("--db", metavar="FILE_OR_URL", help="the failure log: a SQLite file or a postgresql:// URL "
                   "(default: config store.url or store.path)")
    p.add_argument("--run", metavar="RUN_ID", help="only this run")
    p.add_argument("--stage", help="only this stage")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def cmd_config(args: argparse.Namespace) -> int:
    print(_settings(args).resolved().to_json())  # what runs: a strategy of "auto" made concrete
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from mailcascade.email_parse import read_inputs
    from mailcascade.pipeline import Pipeline
    from mailcascade.progress import Progress
    from mailcascade.record import record_line
    from mailcascade.results_file import OrderedStream, ResultsFile, input_key
    from mailcascade.summary import format_summary, summarize

    settings = _settings(args)
    if args.out == "-" and args.resume:
        raise MailcascadeError("--resume needs --out FILE (records on stdout cannot be resumed)")
    items = list(read_inputs(args.inputs, max_bytes=settings.input.max_email_bytes))
    if not items:
        raise MailcascadeError("no inputs found")
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(ResultsFile(args.out, resume=args.resume)) if args.out != "-" else None
        stream = OrderedStream() if sink is None else None
        keys = [input_key(item) for item in items]
        todo = [n for n, key in enumerate(keys) if sink is None or not sink.done(key)]
        pipeline = Pipeline.from_config(settings=settings)
        stack.callback(pipeline.close)
        progress = stack.enter_context(Progress(len(todo), "emails", enabled=not args.no_progress))

        def done(position: int, result: Any) -> None:
            line = record_line(result)
            if sink is not None:
                sink.put(keys[todo[position]], line, failed=result.status == "failed")
            elif stream is not None:
                stream.put(position, line)
            progress.advance(failed=result.status == "failed")

        def work() -> list[Any]:
            if todo:
                _ = pipeline.index  # a missing or stale index is a configuration error: say so once, up front
            if args.engine == "ray":
                from mailcascade.engines.ray_engine import run_on_ray

                return run_on_ray(settings, [items[n] for n in todo], done, run_id=pipeline.run_id,
                                  address=args.ray_address, concurrency=args.concurrency)
            return pipeline.run_many([items[n] for n in todo], concurrency=args.concurrency, on_result=done)

        try:
            results = run_in_worker(work)
        except KeyboardInterrupt:
            ignore_signals()
            written = sink.finish(keys) if sink is not None else 0
            if stream is not None:
                stream.flush_all()
            print(f"mailcascade: stopped: {written} of {len(items)} records in {args.out}; "
                  "run again with --resume to finish", file=sys.stderr)
            raise
        count = sink.finish(keys) if sink is not None else len(results)
    summary = summarize(results)
    pipeline.finish_run(summary)
    print(format_summary(summary), file=sys.stderr)
    kept = f" ({sink.n_previous} kept from before)" if sink is not None and sink.n_previous else ""
    where = pipeline.store.where if pipeline.store else "-"
    print(f"\nwrote {count} records to {args.out}{kept}; failure log: {where} (run {pipeline.run_id})",
          file=sys.stderr)
    unsent = [s.error for r in results for s in r.stages if s.error_code == "circuit_open"]
    if unsent:
        print(f"mailcascade: warning: {len(unsent)} emails were not sent to the model: "
              f"{unsent[0].split('not sent: ', 1)[-1]}; fix the endpoint, then run again with --resume",
              file=sys.stderr)
    failed = sink.failed_among(keys) if sink is not None else sum(r.status == "failed" for r in results)
    return 0 if not failed else 4 if failed == len(items) else 3


def cmd_index_build(args: argparse.Namespace) -> int:
    from mailcascade.catalog import Embedder, rebuild_index
    from mailcascade.progress import PhaseBar

    settings = _settings(args)
    changes: dict[str, Any] = {"path": str(Path(args.catalog).resolve())} if args.catalog else {}
    if args.kind:
        changes["index_kind"] = args.kind
    catalog = dataclasses.replace(settings.catalog, **changes)
    settings = settings.replace(catalog=catalog)
    with PhaseBar("embedding passages", "passages") as bar:
        index = run_in_worker(lambda: rebuild_index(settings, Embedder(settings.embedding), progress=bar))
    print(f"indexed {len(index.passages)} passages from {settings.catalog_path()} into {settings.catalog.index_dir}")
    return 0


def cmd_index_status(args: argparse.Namespace) -> int:
    from mailcascade.catalog import index_status

    print(json.dumps(index_status(_settings(args)), indent=2))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from mailcascade.validate import validate

    try:
        schema = json.loads(Path(args.schema).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MailcascadeError(f"cannot read schema {args.schema}: {exc}") from None
    for name in args.inputs:
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            print(json.dumps({"input": name, "status": "failed", "value": None, "codes": [],
                              "error": f"cannot read input: {exc.strerror}"}))
            continue
        verdict = validate(text, schema, finish_reason=args.finish_reason)
        print(json.dumps({"input": name, **verdict.to_dict()}, ensure_ascii=False))
    return 0


def _existing_store(args: argparse.Namespace, missing: str, hint: str) -> Any:
    """The store `--db` (or the configured one) names, opened; a one-line error `no {missing} at ...: {hint}` when
    a SQLite file is not there yet (opening would create an empty one)."""
    from mailcascade.store import Store, is_postgres_url, open_store

    store = _settings(args).store
    target = args.db or store.url or store.path
    if not is_postgres_url(target) and not Path(target).is_file():
        raise MailcascadeError(f"no {missing} at {target}: {hint}")
    return Store(target, timeout_s=store.busy_timeout_s) if args.db else open_store(store)


def _rows(args: argparse.Namespace) -> list[dict[str, object]]:
    from mailcascade.failures import load_rows

    with _existing_store(args, "failure log", "run `mailcascade run` or `mailcascade eval` first") as opened:
        return load_rows(opened, run_id=args.run, stage=args.stage)


def cmd_failures(args: argparse.Namespace) -> int:
    from mailcascade import failures

    rows = _rows(args)
    if args.examples:
        for row in failures.examples(rows, args.examples, args.limit):
            print(f"--- {row['stage']} email={row['email_id']} attempt={row['attempt']} status={row['status']} "
                  f"finish_reason={row['finish_reason']} run={row['run_id']}")
            print(row["raw"])
        return 0
    if args.json:
        print(json.dumps({"funnel": failures.funnel(rows), "codes": failures.code_stats(rows)}, indent=2))
    else:
        print(failures.format_report(rows))
    return 0


def cmd_failures_replay(args: argparse.Namespace) -> int:
    from mailcascade import failures

    entries = failures.replay(_rows(args))
    changed = [e for e in entries if e["changed"]]
    for e in entries if args.all else changed:
        print(json.dumps(e))
    print(f"replayed {len(entries)} stored verdicts: {len(changed)} changed", file=sys.stderr)
    return 0


def cmd_failures_export(args: argparse.Namespace) -> int:
    from mailcascade import failures

    path = failures.export(_rows(args), args.code, args.out)
    print(f"wrote {sum(1 for _ in path.open(encoding='utf-8'))} cases to {path}")
    return 0


def _csv(value: str, allowed: Sequence[str], flag: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in items if v not in allowed]
    if bad:
        raise MailcascadeError(f"{flag}: unknown {', '.join(bad)}; choose from {', '.join(allowed)}")
    return items


def cmd_eval(args: argparse.Namespace) -> int:
    import time

    from mailcascade.eval.evalset import load_eval_set, resolve_data_dir
    from mailcascade.eval.report import format_summary
    from mailcascade.eval.runner import EvalOptions, run_eval

    if args.resume and not args.out:
        raise MailcascadeError("--resume needs --out RUN (the run directory to continue)")
    eval_set = load_eval_set(args.evalset, data_dir=args.data_dir)
    options = EvalOptions(
        stages=_csv(args.stages, _STAGES, "--stages"), limit=args.limit, sample=args.sample, seed=args.seed,
        concurrency=args.concurrency, resume=args.resume, retry_errors=args.retry_errors,
        engine=args.engine, ray_address=args.ray_address,
        tuned_on="eval" if args.tuned_on_eval else "", progress=not args.no_progress,
        gold=_csv(args.gold, ("department", "hits"), "--gold"),
        data_dir=str(resolve_data_dir(args.data_dir)[0].resolve()),
    )
    settings = load_settings(args.config) if args.config else None
    out = args.out or f"runs/{eval_set.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = run_in_worker(lambda: run_eval(eval_set, out, options, settings=settings))
    print(format_summary(json.loads((run / "metrics.json").read_text(encoding="utf-8"))))
    print(f"\nrun directory: {run}  (report: {run / 'report.html'})")
    return 0


def cmd_router_train(args: argparse.Namespace) -> int:
    from mailcascade.catalog import Embedder
    from mailcascade.eval.evalset import training_examples
    from mailcascade.eval.report import num
    from mailcascade.progress import PhaseBar
    from mailcascade.router.train import TrainOptions, train
    from mailcascade.stages.embed_route import negative_texts

    if args.folds < 0:
        raise MailcascadeError(f"--folds must be 0 or more, got {args.folds}")
    settings, texts, labels = training_examples(args.examples, args.config, data_dir=args.data_dir)
    options = TrainOptions(epochs=args.epochs, pairs_per_example=args.pairs, folds=args.folds, threads=args.threads)
    with PhaseBar("training the router", "steps") as bar:
        manifest = run_in_worker(lambda: train(texts, labels, args.out, Embedder(settings.embedding),
                                               negatives=negative_texts(settings), options=options, progress=bar))
    cal = manifest["calibration"]
    threshold = "none" if cal["threshold"] is None else f"{cal['threshold']:.3f} on {cal['score']}"
    print(f"router saved to {args.out}: {manifest['n_examples']} examples, {len(manifest['labels'])} departments, "
          f"{manifest['training']['seconds']:.0f} s; out-of-scope threshold {threshold}; cross-validated accuracy "
          f"{num(cal['cv_accuracy'])} (in scope {num(cal['cv_in_scope_accuracy'])})")
    print(f'use it with [route] strategy = "trained" (or "hybrid") and model_dir = "{args.out}"')
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mailcascade.eval.report import format_summary, load_run, write_report

    _, metrics, _ = load_run(Path(args.run))
    path = write_report(Path(args.run))
    print(format_summary(metrics))
    print(f"\nreport: {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from mailcascade.eval.compare import compare_runs, format_compare

    if args.html:
        from mailcascade.eval.compare_report import write_compare_html

        result = write_compare_html(Path(args.run_a), Path(args.run_b), Path(args.html))
    else:
        result = compare_runs(Path(args.run_a), Path(args.run_b))
    print(json.dumps(result, indent=2) if args.json else format_compare(result))
    if args.html:
        print(f"\nwrote {args.html}", file=sys.stderr)
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from mailcascade.eval.diagnose.run import diagnose_run, format_diagnosis

    diagnosis = run_in_worker(lambda: diagnose_run(args.run, data_dir=args.data_dir,
                                                   ablation_limit=args.ablation_limit, progress=not args.no_progress))
    print(json.dumps(diagnosis, indent=2, default=str) if args.json else format_diagnosis(diagnosis))
    print(f"\nstored in {Path(args.run) / 'metrics.json'} (\"diagnosis\"); report: {Path(args.run) / 'report.html'}",
          file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from mailcascade.serve.run import bind_host, serve
    except ImportError as exc:
        raise MailcascadeError(f"mailcascade serve needs the serve extra ({exc.name} is missing): "
                               "pip install 'mailcascade[serve]'") from None
    settings = _settings(args)
    host = bind_host(args.host, settings)
    print(f"mailcascade: serving on http://{host}:{args.port} (OpenAPI: /openapi.json); Ctrl-C or SIGTERM "
          "stops after the work in flight", file=sys.stderr)
    serve(settings, host, args.port)
    return 0


def _feedback_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    from mailcascade.feedback import load_feedback

    with _existing_store(args, "store", "run `mailcascade serve` and send feedback first") as opened:
        return load_feedback(opened)


def cmd_feedback(args: argparse.Namespace) -> int:
    from mailcascade.feedback import feedback_stats, format_stats

    stats = feedback_stats(_feedback_rows(args))
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def cmd_feedback_export(args: argparse.Namespace) -> int:
    from mailcascade.feedback import export_cases

    written, missing = export_cases(_feedback_rows(args), args.out)
    print(f"wrote {written} cases to {args.out}")
    if missing:
        print(f"mailcascade: warning: {missing} emails with feedback were left out: their text was not stored "
              "(store.store_email_bodies = false when they were served)", file=sys.stderr)
    return 0


def cmd_model_serve(args: argparse.Namespace) -> int:
    from mailcascade.llm import LocalServer

    settings = _settings(args)
    LocalServer(settings.local_server, settings.llm.base_url).serve_forever()
    return 0


if __name__ == "__main__":
    entry()
