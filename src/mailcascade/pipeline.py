"""The cascade: route -> retrieve -> draft. The only module that knows the stage order.

A failure in one email becomes that email's failure record; it never escapes `run`, `arun` or `run_many`.
A Pipeline is safe to share across threads and asyncio tasks: per-email state lives in local variables.
Nothing is loaded or started before a stage needs it (the embedding router, the index, the embedded model server);
`start(stages)` / `astart(stages)` do it up front. The sync `run` drives `arun` on the pipeline's own event-loop
thread, so there is one code path, and a deadline cancels in-flight model calls either way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mailcascade.catalog import Embedder, EmbedderLike, open_index
from mailcascade.catalog.cached import CachedSearcher
from mailcascade.config import Settings, load_settings
from mailcascade.errors import ConfigError, EmailParseError, LLMError, MailcascadeError
from mailcascade.llm import OpenAIClient
from mailcascade.llm.base import LLM
from mailcascade.llm.cache import CachedLLM
from mailcascade.llm.on_demand import ServerOnDemand
from mailcascade.progress import PhaseBar
from mailcascade.prompts import Prompt, load_prompts
from mailcascade.router.model import TrainedRouter
from mailcascade.router.shortlist import Candidate, RouterLike
from mailcascade.stages import draft as draft_stage
from mailcascade.stages import retrieve as retrieve_stage
from mailcascade.stages import route as route_stage
from mailcascade.stages.call import Budget, StageOutput
from mailcascade.stages.embed_route import EmbeddingRouter, email_text, embed_route, load_examples
from mailcascade.store import Store, open_store
from mailcascade.telemetry import AttributeValue, NoTracer, TracedLLM, Tracer, document_attributes, tracer_from_settings
from mailcascade.types import ChatRequest, ChatResponse, Draft, Email, Hit, Result, RouteDecision, StageRecord
from mailcascade.validate import Policy, default_policy

log = logging.getLogger(__name__)
T = TypeVar("T")
DEADLINE = "deadline_exceeded"

STAGES = ("route", "retrieve", "draft")
NOT_ROUTED = "unknown"  # the department a draft prompt sees when routing was not run and none was given
Item = Email | EmailParseError


@dataclass(frozen=True)
class Given:
    """Upstream outputs to use instead of running a stage (gold labels, for ceiling analysis)."""

    department: str | None = None
    hits: tuple[Hit, ...] | None = None


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        llm: LLM,
        prompts: dict[str, Prompt],
        *,
        store: Store | None = None,
        index: retrieve_stage.Searcher | None = None,
        router: RouterLike | None = None,
        router_factory: Callable[[], RouterLike] | None = None,
        embedder: EmbedderLike | None = None,
        few_shot_pool: Sequence[tuple[str, str]] = (),
        server: ServerOnDemand | None = None,
        run_id: str | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        """`router_factory` builds the router on first use (it embeds the examples or loads a model: not cheap).
        Settings are taken as given (`from_config` resolves a strategy of "auto"); here "auto" means the router
        passed, or the LLM without one."""
        if settings.route.strategy == "auto":
            given = router is not None or router_factory is not None
            settings = settings.replace(route=dataclasses.replace(settings.route,
                                                                  strategy="embedding" if given else "llm"))
        needed = ("route", "draft", "route_shortlist") if settings.route.strategy == "hybrid" else ("route", "draft")
        for name in needed:
            if name not in prompts:
                raise MailcascadeError(f"no '{name}' prompt in {settings.prompts_path()}")
        self.settings = settings
        self.llm = llm
        self.prompts = prompts
        self.store = store
        self.few_shot = route_stage.pick_few_shot(few_shot_pool, settings.route.few_shot)
        self.policies: dict[str, Policy] = {
            stage: default_policy().with_overrides(settings.validation.policy.get(stage, {})) for stage in STAGES
        }
        self.tracer: Tracer = tracer or tracer_from_settings(settings.telemetry)
        self._router = router
        self._router_factory = router_factory
        self._embedder = embedder
        self._index = index
        self._lock = threading.Lock()
        self._router_lock = threading.Lock()
        self._server = server
        self._loop = _LoopThread()
        weakref.finalize(self, self._loop.close)
        self.run_id = store.start_run("pipeline", settings.to_dict(), run_id) if store else (run_id or "")

    @classmethod
    def from_config(
        cls, path: str | Path | None = None, *, settings: Settings | None = None, llm: LLM | None = None,
        index: retrieve_stage.Searcher | None = None, router: RouterLike | None = None,
        embedder: EmbedderLike | None = None, few_shot_pool: Sequence[tuple[str, str]] | None = None,
        run_id: str | None = None, tracer: Tracer | None = None,
    ) -> Pipeline:
        """Build from a TOML file (or defaults plus environment when None). Pass `llm` to use your own client.

        Cheap: reads the settings, prompts and router examples and opens the store; no model, index or server is
        loaded or started here. `[route] strategy = "auto"` is made concrete here (`Settings.resolved`)."""
        settings = (settings or load_settings(path)).resolved()
        store = open_store(settings.store)
        server = None
        if llm is None:
            server = ServerOnDemand(OpenAIClient(settings.llm), settings)  # the embedded server, on first use
            llm = server
        base: LLM = llm
        if settings.store.cache:
            base = CachedLLM(base, store, settings.llm.base_url, settings.llm.structured_output)
        embedder = embedder or Embedder(settings.embedding)  # loads its model on first encode
        factory = None
        if router is None and settings.route.strategy != "llm":
            factory = _router_factory(settings, embedder)
        if few_shot_pool is None and settings.route.few_shot and settings.route.examples_path:
            few_shot_pool = load_examples(settings.route.examples_path)
        return cls(settings, base, load_prompts(settings.prompts_path()), store=store, index=index, router=router,
                   router_factory=factory, embedder=embedder, few_shot_pool=few_shot_pool or (), server=server,
                   run_id=run_id, tracer=tracer)

    # lifecycle ----------------------------------------------------------
    def __enter__(self) -> Pipeline:
        """Starts nothing: each part starts when a stage first needs it (or call `start(stages)`)."""
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start(self, stages: Sequence[str] = STAGES) -> None:
        """Load and start now what `stages` need, instead of on first use: the embedding router (route with
        strategy "embedding"), the index (retrieve), the embedded model server (an LLM route, draft) if the settings
        point at it and nothing answers there. Raises CatalogError, ConfigError or LLMError when one cannot start."""
        needs = self.needs(stages)
        if "router" in needs:
            _ = self.router
        if "index" in needs:
            _ = self.index
        if "model" in needs and self._server is not None:
            self._server.ensure()

    async def astart(self, stages: Sequence[str] = STAGES) -> None:
        """Async `start` (the loading runs in worker threads)."""
        await asyncio.to_thread(self.start, stages)

    def needs(self, stages: Sequence[str] = STAGES) -> frozenset[str]:
        """What running `stages` needs: "router", "index", "model" (a model endpoint)."""
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"unknown stage(s) {', '.join(unknown)}; stages are {', '.join(STAGES)}")
        needs = set()
        if "route" in stages:
            needs.add("router" if self._uses_router else "model")
            if self.settings.route.strategy == "hybrid":
                needs.add("model")  # for the emails the router is unsure about
        if "retrieve" in stages:
            needs.add("index")
        if "draft" in stages:
            needs.add("model")
        return frozenset(needs)

    def finish_run(self, summary: Mapping[str, Any]) -> None:
        """Record in the store that this run ended, with a summary (counts, cache statistics)."""
        if self.store is not None:
            self.store.finish_run(self.run_id, summary)

    def close(self) -> None:
        """Stop the embedded model server if this pipeline started it, and the thread behind the sync `run`; flush
        the traces; commit the store's queued writes. The pipeline may be used again (parts start again on first
        use)."""
        if self.store is not None:
            self.store.flush()
        if self._server is not None:
            self._server.close()
        self._loop.close()
        self.tracer.flush()

    async def aclose(self) -> None:
        """`close`, and the model client's connections of the running event loop are closed too."""
        await self.release_loop()
        await asyncio.to_thread(self.close)

    async def release_loop(self) -> None:
        """Close the model connections this pipeline opened on the running event loop; call it before the loop ends
        when you run the pipeline on a loop of your own without `async with` (`run_many` and the eval do). The
        pipeline stays usable: a next call opens new ones. A model client passed in (`llm=`) is yours to close."""
        if self._server is not None:
            await self._server.release()

    @property
    def router(self) -> RouterLike | None:
        """The embedding or trained router (built on first use), or None when routing is by the LLM."""
        with self._router_lock:
            if self._router is None and self._router_factory is not None:
                started = time.perf_counter()
                self._router = self._router_factory()
                log.info("router %s ready in %.1f s", self._router.name, time.perf_counter() - started)
            return self._router

    @property
    def embedder(self) -> EmbedderLike:
        with self._lock:
            if self._embedder is None:
                self._embedder = Embedder(self.settings.embedding)
            return self._embedder

    @property
    def index(self) -> retrieve_stage.Searcher:
        embedder = self.embedder
        with self._lock:
            if self._index is None:
                started = time.perf_counter()
                with PhaseBar("indexing the catalogue", "passages") as bar:  # silent unless stderr is a terminal
                    index = open_index(self.settings, embedder, progress=bar)
                use_cache = self.store is not None and self.settings.store.cache
                self._index = CachedSearcher(index, self.store) if use_cache and self.store else index
                log.info("catalogue index ready in %.1f s", time.perf_counter() - started)
            return self._index

    @property
    def _uses_router(self) -> bool:
        return self._router is not None or self._router_factory is not None

    # one email ----------------------------------------------------------
    def run(self, email: Email, *, stages: Sequence[str] = STAGES, given: Given | None = None) -> Result:
        """Run the cascade on one email; `stages` picks which stages run, `given` supplies the others' outputs.

        Runs `arun` on the pipeline's event-loop thread; safe to call from many threads at once."""
        return self._loop.run(self.arun(email, stages=stages, given=given))

    async def arun(self, email: Email, *, stages: Sequence[str] = STAGES, given: Given | None = None) -> Result:
        deadline = self.settings.pipeline.deadline_s
        work = _Work(email, deadline, time.monotonic() + deadline if deadline else None)
        started = time.perf_counter()
        traced = not isinstance(self.tracer, NoTracer)  # telemetry off: no span attributes are even built
        with self.tracer.span("email", "CHAIN", self._email_attributes(email, stages) if traced else {}) as span:
            try:
                if work.expires is None:
                    outputs = await self._cascade(work, stages, given or Given())
                else:
                    # a backstop for work that is not a model call (the model calls end at the deadline themselves)
                    async with asyncio.timeout(deadline + _GRACE_S) as limit:
                        outputs = await self._cascade(work, stages, given or Given())
                result = self._finish(email, *outputs, stages)  # the store only queues its writes: no thread
            except _DeadlinePassed:
                result = self._deadline_result(work)
            except TimeoutError as exc:  # the backstop's, or a TimeoutError from inside a stage
                expired = work.expires is not None and limit.expired()
                result = self._deadline_result(work) if expired else failure(email.id, email.source, exc)
            except Exception as exc:
                result = failure(email.id, email.source, exc)
            if traced:
                span.set(self._result_attributes(result))
                if result.status == "failed":
                    span.fail(result.error[:200])
        log.debug("email %s: %s in %.0f ms", email.id, result.status, (time.perf_counter() - started) * 1000)
        return result

    async def _cascade(self, work: _Work, stages: Sequence[str], given: Given) -> tuple[
        StageOutput[RouteDecision], StageOutput[tuple[Hit, ...]], StageOutput[Draft] | None
    ]:
        email = work.email
        early = self._retrieve_early(email, stages)
        try:
            return await self._stages(work, stages, given, early)
        finally:
            if early is not None:
                _drop(early)

    def _retrieve_early(self, email: Email, stages: Sequence[str]) -> asyncio.Task[StageOutput[tuple[Hit, ...]]] | None:
        """Retrieval started alongside the route call when its query does not depend on the route and the route is
        the model's (a router embeds the same text itself, and its vector is then reused): the query's embedding
        and search take CPU while the route call waits on the model."""
        if ("route" not in stages or "retrieve" not in stages or self._uses_router
                or self.settings.retrieval.include_route_in_query):
            return None
        return asyncio.create_task(asyncio.to_thread(self._retrieve, email, None))

    async def _stages(self, work: _Work, stages: Sequence[str], given: Given,
                      early: asyncio.Task[StageOutput[tuple[Hit, ...]]] | None) -> tuple[
        StageOutput[RouteDecision], StageOutput[tuple[Hit, ...]], StageOutput[Draft] | None
    ]:
        email, budget = work.email, self._budget()
        if "route" in stages:
            router = self._router or (await asyncio.to_thread(lambda: self.router) if self._uses_router else None)
            if router is not None:
                llm = self._llm_for(work, "route")
                routed = await self._stage(work, "route", lambda: self._route_by_router(email, router, llm, budget))
            else:
                llm = self._llm_for(work, "route")
                routed = await self._stage(work, "route", lambda: route_stage.aroute(
                    email, llm, self.prompts["route"], self.settings, self.policies["route"], budget, self.few_shot))
        else:
            routed = _given_route(given)
        if "retrieve" in stages:
            department = routed.value.department if routed.value else None
            retrieved = await self._stage(work, "retrieve", lambda: early or asyncio.to_thread(
                self._retrieve, email, department))
        else:
            retrieved = _given_hits(given)
        drafted = None
        if "draft" in stages and _can_draft(routed):
            llm = self._llm_for(work, "draft")
            drafted = await self._stage(work, "draft", lambda: draft_stage.adraft(
                email, _department(routed), retrieved.value or (), llm, self.prompts["draft"], self.settings,
                self.policies["draft"], budget))
        return routed, retrieved, drafted

    async def _route_by_router(self, email: Email, router: RouterLike, llm: LLM,
                               budget: Budget) -> StageOutput[RouteDecision]:
        """The router's decision; with the hybrid strategy, the LLM's choice among the router's shortlist when the
        router's confidence is below route.defer_below."""
        routed = await asyncio.to_thread(embed_route, email, router, self.settings.input.max_prompt_chars)
        shortlist = await asyncio.to_thread(self._shortlist, router, email, routed)
        if shortlist is None:
            return routed
        asked = await route_stage.aroute_shortlist(email, llm, self.prompts["route_shortlist"], self.settings,
                                                   self.policies["route"], budget, shortlist)
        return route_stage.overrule(routed, asked)

    def _shortlist(self, router: RouterLike, email: Email,
                   routed: StageOutput[RouteDecision]) -> list[Candidate] | None:
        """Hybrid: the candidates for the LLM when the router is unsure (None: the router's decision stands)."""
        route = self.settings.route
        if route.strategy != "hybrid" or routed.value is None or routed.value.confidence >= route.defer_below:
            return None
        return router.shortlist([email_text(email, self.settings.input.max_prompt_chars)], route.shortlist)[0]

    async def _stage(self, work: _Work, name: str, run: Callable[[], Awaitable[StageOutput[T]]]) -> StageOutput[T]:
        work.stage = name
        if work.passed():
            raise _DeadlinePassed
        if isinstance(self.tracer, NoTracer):
            out = await run()
        else:
            kind = "RETRIEVER" if name == "retrieve" else "CHAIN"
            attributes: dict[str, AttributeValue] = {"mailcascade.stage": name}
            if self.tracer.include_content and name == "retrieve":
                attributes["input.value"] = f"{work.email.subject}\n\n{work.email.body}"
            with self.tracer.span(name, kind, attributes) as span:
                out = await run()
                span.set(self._stage_attributes(out))
                if out.record.status in ("failed", "error"):
                    span.fail(out.record.error_code or out.record.status)
        work.done.append(out)
        return out

    def _llm_for(self, work: _Work, stage: str) -> LLM:
        llm = self.llm
        if work.expires is not None:
            llm = _DeadlineLLM(llm, work.expires, work.deadline_s)
        if not isinstance(self.tracer, NoTracer):
            llm = TracedLLM(llm, self.tracer, stage)
        return llm

    def _deadline_result(self, work: _Work) -> Result:
        """The email's failure record when its deadline passed: the stages that finished (with their outputs), then
        the one that was running (or due) with status error and error_code deadline_exceeded."""
        records = [o.record for o in work.done]
        if not any(r.error_code == DEADLINE for r in records):
            records.append(StageRecord(stage=work.stage, status="error", error_code=DEADLINE,
                                       error=f"{work.stage}: {_deadline_message(work.deadline_s)}"))
        log.warning("email %s: the deadline of %g s (pipeline.deadline_s) passed during %s", work.email.id,
                    work.deadline_s, work.stage)
        self._log(work.email, work.done)
        failed = [r for r in records if r.status in ("failed", "error")]
        values = {o.record.stage: o.value for o in work.done}
        route, hits = values.get("route"), values.get("retrieve")
        return Result(id=work.email.id, status="failed", source=work.email.source,
                      route=route if isinstance(route, RouteDecision) else None,
                      hits=hits if isinstance(hits, tuple) else (), stages=tuple(records),
                      error="; ".join(r.error for r in failed))

    # many emails --------------------------------------------------------
    def run_many(
        self, items: Iterable[Item], concurrency: int | None = None,
        on_result: Callable[[int, Result], None] | None = None,
        *, stages: Sequence[str] = STAGES, given: Callable[[Email], Given | None] | None = None,
    ) -> list[Result]:
        """Run every item; results come back in input order, one per item (parse errors become failures).

        `on_result(position, result)` is called as each one finishes, in completion order. Runs `arun_many` on an
        event loop of its own, which ends with the call.
        """
        async def run() -> list[Result]:
            try:
                return await self.arun_many(items, concurrency, on_result, stages=stages, given=given)
            finally:
                await self.release_loop()

        return asyncio.run(run())

    async def arun_many(
        self, items: Iterable[Item], concurrency: int | None = None,
        on_result: Callable[[int, Result], None] | None = None,
        *, stages: Sequence[str] = STAGES, given: Callable[[Email], Given | None] | None = None,
    ) -> list[Result]:
        width = max(1, concurrency or self.settings.emails_in_flight)
        limit = asyncio.Semaphore(width)
        items = list(items)
        log.info("run %s: %d emails, stages %s, concurrency %d", self.run_id or "-", len(items), ",".join(stages),
                 width)
        started = time.perf_counter()

        async def one(position: int, item: Item) -> Result:
            async with limit:
                if isinstance(item, Email):
                    result = await self.arun(item, stages=stages, given=given(item) if given else None)
                else:
                    result = parse_failure(item)
            if on_result is not None:
                on_result(position, result)
            return result

        results = list(await asyncio.gather(*(one(i, item) for i, item in enumerate(items))))
        failed = sum(r.status == "failed" for r in results)
        log.info("run %s finished: %d ok, %d failed in %.1f s", self.run_id or "-", len(results) - failed, failed,
                 time.perf_counter() - started)
        return results

    # internals ----------------------------------------------------------
    def _budget(self) -> Budget:
        return Budget(reask_tokens_left=self.settings.validation.max_reask_tokens)

    def _retrieve(self, email: Email, department: str | None) -> StageOutput[tuple[Hit, ...]]:
        return retrieve_stage.retrieve(email, department, self.index, self.settings.retrieval,
                                       self.settings.input.max_prompt_chars)

    def _email_attributes(self, email: Email, stages: Sequence[str]) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {"mailcascade.email.id": email.id,
                                                 "mailcascade.stages": ",".join(stages)}
        if self.run_id:
            attributes["mailcascade.run_id"] = self.run_id
        if self.tracer.include_content:
            attributes["input.value"] = f"Subject: {email.subject}\n\n{email.body}"
        return attributes

    def _result_attributes(self, result: Result) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {"mailcascade.status": result.status}
        if result.department:
            attributes["mailcascade.department"] = result.department
        codes = sorted({s.error_code for s in result.stages if s.error_code})
        if codes:
            attributes["mailcascade.error_codes"] = ",".join(codes)
        if self.tracer.include_content and result.draft is not None:
            attributes["output.value"] = result.draft.reply
        return attributes

    def _stage_attributes(self, out: StageOutput[Any]) -> dict[str, AttributeValue]:
        record = out.record
        attributes: dict[str, AttributeValue] = {
            "mailcascade.stage.status": record.status, "mailcascade.attempts": len(record.attempts),
            "mailcascade.failure_codes": ",".join(record.failure_codes),
        }
        for key, value in (("mailcascade.prompt_hash", record.prompt_hash), ("mailcascade.model", record.model),
                           ("mailcascade.error_code", record.error_code)):
            if value:
                attributes[key] = value
        if record.stage == "retrieve" and out.value:
            attributes.update(document_attributes(out.value, self.tracer.include_content))
        if isinstance(out.value, RouteDecision):
            attributes["mailcascade.department"] = out.value.department
        return attributes

    def _finish(
        self, email: Email, routed: StageOutput[RouteDecision], retrieved: StageOutput[tuple[Hit, ...]],
        drafted: StageOutput[Draft] | None, stages: Sequence[str],
    ) -> Result:
        outputs: list[StageOutput[Any]] = [routed, retrieved]
        if drafted is not None:
            outputs.append(drafted)
        self._log(email, outputs)
        records: list[StageRecord] = [o.record for o in outputs]
        if drafted is None and "draft" in stages:
            records.append(StageRecord(stage="draft", status="skipped", error="no department: routing failed"))
        failed = [r for r in records if r.status in ("failed", "error")]
        return Result(
            id=email.id,
            status="failed" if failed or (drafted is None and "draft" in stages) else "ok",
            source=email.source,
            route=routed.value,
            hits=retrieved.value or (),
            draft=drafted.value if drafted else None,
            stages=tuple(records),
            error="; ".join(r.error for r in failed) or ("" if drafted or "draft" not in stages else
                                                         "draft: skipped because routing failed"),
        )

    def _log(self, email: Email, outputs: Sequence[StageOutput[Any]]) -> None:
        if self.store is None:
            return
        body = f"Subject: {email.subject}\n\n{email.body}" if self.settings.store.store_email_bodies else None
        for out in outputs:
            if out.record.attempts:
                self.store.log_stage(self.run_id, email.id, out.record, schema=out.schema, context=out.context,
                                     actions=out.actions, email_body=body)

    def __repr__(self) -> str:
        return f"Pipeline(model={self.llm.model!r}, prompts={sorted(self.prompts)}, run_id={self.run_id!r})"


def _given_route(given: Given) -> StageOutput[RouteDecision]:
    if given.department is None:
        return StageOutput(value=None, record=StageRecord(stage="route", status="skipped"))
    return StageOutput(value=RouteDecision(given.department, 1.0, "given"),
                       record=StageRecord(stage="route", status="given"))


def _drop(task: asyncio.Task[Any]) -> None:
    """A task whose result is no longer wanted: cancelled if still running, its exception (if any) retrieved."""
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


def _given_hits(given: Given) -> StageOutput[tuple[Hit, ...]]:
    if given.hits is None:
        return StageOutput(value=(), record=StageRecord(stage="retrieve", status="skipped"))
    return StageOutput(value=given.hits, record=StageRecord(stage="retrieve", status="given"))


def _can_draft(routed: StageOutput[RouteDecision]) -> bool:
    """Draft unless routing ran and failed; when routing did not run, draft without a department."""
    return routed.value is not None or routed.record.status == "skipped"


def _department(routed: StageOutput[RouteDecision]) -> str:
    return routed.value.department if routed.value else NOT_ROUTED


def failure(email_id: str, source: str, exc: BaseException) -> Result:
    kind = "" if isinstance(exc, MailcascadeError) else f"{type(exc).__name__}: "
    return Result(id=email_id, status="failed", source=source, error=f"{kind}{exc}")


def parse_failure(error: EmailParseError) -> Result:
    return Result(id=error.source or "unknown", status="failed", source=error.source, error=error.reason)


_GRACE_S = 0.25  # the backstop fires this long after the deadline, so a model call ends first with its own record


def _deadline_message(seconds: float) -> str:
    return f"the email's deadline of {seconds:g} s passed (pipeline.deadline_s)"


class _DeadlinePassed(Exception):
    """Raised before a stage starts when the email's deadline has passed."""


@dataclass
class _Work:
    """One email in flight: its deadline, the stage running now, the stages done."""

    email: Email
    deadline_s: float
    expires: float | None  # time.monotonic() when the deadline passes
    stage: str = "route"
    done: list[StageOutput[Any]] = field(default_factory=list)

    def passed(self) -> bool:
        return self.expires is not None and time.monotonic() >= self.expires


class _DeadlineLLM:
    """An LLM whose calls end when the email's deadline passes: the call is cancelled and an LLMError with code
    deadline_exceeded raised (so the stage record has status error, like any answer that did not come)."""

    def __init__(self, inner: LLM, expires: float, seconds: float) -> None:
        self._inner = inner
        self._expires = expires
        self._seconds = seconds

    @property
    def model(self) -> str:
        return self._inner.model

    def _left(self) -> float:
        left = self._expires - time.monotonic()
        if left <= 0:
            raise self._error(attempts=0)
        return left

    def _error(self, attempts: int) -> LLMError:
        return LLMError(_deadline_message(self._seconds), retryable=False, attempts=attempts, code=DEADLINE)

    def complete(self, request: ChatRequest) -> ChatResponse:
        self._left()
        return self._inner.complete(request)  # the pipeline calls acomplete; a sync call cannot be cancelled

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        try:
            return await asyncio.wait_for(self._inner.acomplete(request), self._left())
        except TimeoutError:
            raise self._error(attempts=1) from None


def _router_factory(settings: Settings, embedder: EmbedderLike) -> Callable[[], RouterLike]:
    """The router `[route] strategy` asks for, built on first use; what can be checked cheaply is checked now.

    "embedding": the k-NN router over `route.examples_path` (examples checked now, embedded and calibrated on first
    use); "trained": the model in `route.model_dir` (its manifest checked now); "hybrid": the trained router when
    model_dir is set, else the k-NN router."""
    route = settings.route
    if route.strategy == "trained" or (route.strategy == "hybrid" and route.model_dir):
        if not route.model_dir:
            raise ConfigError('[route] strategy = "trained" needs model_dir (create one with '
                              "`mailcascade router train EXAMPLES --out DIR`)", key="route.model_dir")
        TrainedRouter.check(route.model_dir, settings)
        return lambda: TrainedRouter.load(route.model_dir, settings)
    if not route.examples_path:
        raise ConfigError(f'[route] strategy = "{route.strategy}" needs examples_path (or model_dir)',
                          key="route.examples_path")
    pairs = load_examples(route.examples_path, settings.department_names)

    def build() -> EmbeddingRouter:
        return EmbeddingRouter.calibrated([t for t, _ in pairs], [label for _, label in pairs], embedder, settings)

    return build


class _LoopThread:
    """An event loop on a daemon thread of its own, started on first use: the sync API runs the async code there."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="mailcascade-loop", daemon=True)
                self._thread.start()
            loop = self._loop
        if threading.current_thread() is self._thread:
            coro.close()
            raise MailcascadeError("Pipeline.run was called from inside the pipeline's own event loop (an on_result "
                                   "callback?); use `await pipeline.arun(...)` there")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def close(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
