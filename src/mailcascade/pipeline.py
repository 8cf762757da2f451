"""The cascade: route -> retrieve -> draft. The only module that knows the stage order.

A failure in one email becomes that email's failure record; it never escapes `run`, `arun` or `run_many`.
A Pipeline is safe to share across threads and asyncio tasks: per-email state lives in local variables.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailcascade.catalog import Embedder, EmbedderLike, open_index
from mailcascade.catalog.cached import CachedSearcher
from mailcascade.config import Settings, load_settings
from mailcascade.errors import EmailParseError, MailcascadeError
from mailcascade.llm import OpenAIClient
from mailcascade.llm.base import LLM
from mailcascade.llm.cache import CachedLLM
from mailcascade.llm.on_demand import ServerOnDemand
from mailcascade.progress import PhaseBar
from mailcascade.prompts import Prompt, load_prompts
from mailcascade.stages import draft as draft_stage
from mailcascade.stages import retrieve as retrieve_stage
from mailcascade.stages import route as route_stage
from mailcascade.stages.call import Budget, StageOutput
from mailcascade.stages.embed_route import EmbeddingRouter, embed_route, load_examples
from mailcascade.store import Store
from mailcascade.types import Draft, Email, Hit, Result, RouteDecision, StageRecord
from mailcascade.validate import Policy, default_policy

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
        router: EmbeddingRouter | None = None,
        embedder: EmbedderLike | None = None,
        few_shot_pool: Sequence[tuple[str, str]] = (),
        server: ServerOnDemand | None = None,
        run_id: str | None = None,
    ) -> None:
        for name in ("route", "draft"):
            if name not in prompts:
                raise MailcascadeError(f"no '{name}' prompt in {settings.prompts_path()}")
        self.settings = settings
        self.llm = llm
        self.prompts = prompts
        self.store = store
        self.router = router
        self.few_shot = route_stage.pick_few_shot(few_shot_pool, settings.route.few_shot)
        self.policies: dict[str, Policy] = {
            stage: default_policy().with_overrides(settings.validation.policy.get(stage, {})) for stage in STAGES
        }
        self._embedder = embedder
        self._index = index
        self._lock = threading.Lock()
        self._server = server
        self.run_id = store.start_run("pipeline", settings.to_dict(), run_id) if store else (run_id or "")

    @classmethod
    def from_config(
        cls, path: str | Path | None = None, *, settings: Settings | None = None, llm: LLM | None = None,
        index: retrieve_stage.Searcher | None = None, router: EmbeddingRouter | None = None,
        embedder: EmbedderLike | None = None, few_shot_pool: Sequence[tuple[str, str]] | None = None,
        run_id: str | None = None,
    ) -> Pipeline:
        """Build from a TOML file (or defaults plus environment when None). Pass `llm` to use your own client."""
        settings = settings or load_settings(path)
        store = Store(settings.store.path, timeout_s=settings.store.busy_timeout_s)
        server = None
        if llm is None:
            server = ServerOnDemand(OpenAIClient(settings.llm), settings)  # the embedded server, on first use
            llm = server
        base: LLM = llm
        if settings.store.cache:
            base = CachedLLM(base, store, f"{settings.llm.base_url}|{settings.llm.structured_output}")
        embedder = embedder or Embedder(settings.embedding)
        if router is None and settings.route.strategy == "embedding":
            router = EmbeddingRouter.from_settings(settings, embedder)
        if few_shot_pool is None and settings.route.few_shot and settings.route.examples_path:
            few_shot_pool = load_examples(settings.route.examples_path)
        return cls(settings, base, load_prompts(settings.prompts_path()), store=store, index=index, router=router,
                   embedder=embedder, few_shot_pool=few_shot_pool or (), server=server, run_id=run_id)

    # lifecycle ----------------------------------------------------------
    def __enter__(self) -> Pipeline:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the embedded model server now (it otherwise starts on the first model call that needs it), if
        the settings point at it and nothing answers there. Raises LLMError when it cannot start."""
        if self._server is not None:
            self._server.ensure()

    def finish_run(self, summary: Mapping[str, Any]) -> None:
        """Record in the store that this run ended, with a summary (counts, cache statistics)."""
        if self.store is not None:
            self.store.finish_run(self.run_id, summary)

    def close(self) -> None:
        """Stop the embedded model server if this pipeline started it."""
        if self._server is not None:
            self._server.close()

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
                with PhaseBar("indexing the catalogue", "passages") as bar:  # silent unless stderr is a terminal
                    index = open_index(self.settings, embedder, progress=bar)
                use_cache = self.store is not None and self.settings.store.cache
                self._index = CachedSearcher(index, self.store) if use_cache and self.store else index
            return self._index

    # one email ----------------------------------------------------------
    def run(self, email: Email, *, stages: Sequence[str] = STAGES, given: Given | None = None) -> Result:
        """Run the cascade on one email; `stages` picks which stages run, `given` supplies the others' outputs."""
        given = given or Given()
        try:
            budget = self._budget()
            if "route" in stages:
                routed = (embed_route(email, self.router, self.settings.input.max_prompt_chars) if self.router else
                          route_stage.route(email, self.llm, self.prompts["route"], self.settings,
                                            self.policies["route"], budget, self.few_shot))
            else:
                routed = _given_route(given)
            retrieved = (self._retrieve(email, routed) if "retrieve" in stages else _given_hits(given))
            drafted = None
            if "draft" in stages and _can_draft(routed):
                drafted = draft_stage.draft(email, _department(routed), retrieved.value or (), self.llm,
                                            self.prompts["draft"], self.settings, self.policies["draft"], budget)
            return self._finish(email, routed, retrieved, drafted, stages)
        except Exception as exc:
            return failure(email.id, email.source, exc)

    async def arun(self, email: Email, *, stages: Sequence[str] = STAGES, given: Given | None = None) -> Result:
        given = given or Given()
        try:
            budget = self._budget()
            if "route" in stages:
                routed = (await asyncio.to_thread(embed_route, email, self.router,
                                                  self.settings.input.max_prompt_chars) if self.router else
                          await route_stage.aroute(email, self.llm, self.prompts["route"], self.settings,
                                                   self.policies["route"], budget, self.few_shot))
            else:
                routed = _given_route(given)
            retrieved = (await asyncio.to_thread(self._retrieve, email, routed) if "retrieve" in stages
                         else _given_hits(given))
            drafted = None
            if "draft" in stages and _can_draft(routed):
                drafted = await draft_stage.adraft(email, _department(routed), retrieved.value or (), self.llm,
                                                   self.prompts["draft"], self.settings, self.policies["draft"],
                                                   budget)
            return await asyncio.to_thread(self._finish, email, routed, retrieved, drafted, stages)
        except Exception as exc:
            return failure(email.id, email.source, exc)

    # many emails --------------------------------------------------------
    def run_many(
        self, items: Iterable[Item], concurrency: int | None = None,
        on_result: Callable[[int, Result], None] | None = None,
    ) -> list[Result]:
        """Run every item; results come back in input order, one per item (parse errors become failures).

        `on_result(position, result)` is called as each one finishes, in completion order.
        """
        return asyncio.run(self.arun_many(items, concurrency, on_result))

    async def arun_many(
        self, items: Iterable[Item], concurrency: int | None = None,
        on_result: Callable[[int, Result], None] | None = None,
        *, stages: Sequence[str] = STAGES, given: Callable[[Email], Given | None] | None = None,
    ) -> list[Result]:
        limit = asyncio.Semaphore(max(1, concurrency or self.settings.concurrency))

        async def one(position: int, item: Item) -> Result:
            async with limit:
                if isinstance(item, Email):
                    result = await self.arun(item, stages=stages, given=given(item) if given else None)
                else:
                    result = parse_failure(item)
            if on_result is not None:
                on_result(position, result)
            return result

        return list(await asyncio.gather(*(one(i, item) for i, item in enumerate(items))))

    # internals ----------------------------------------------------------
    def _budget(self) -> Budget:
        return Budget(reask_tokens_left=self.settings.validation.max_reask_tokens)

    def _retrieve(self, email: Email, routed: StageOutput[RouteDecision]) -> StageOutput[tuple[Hit, ...]]:
        department = routed.value.department if routed.value else None
        return retrieve_stage.retrieve(email, department, self.index, self.settings.retrieval,
                                       self.settings.input.max_prompt_chars)

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
