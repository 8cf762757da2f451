"""Versioned schema migrations: ordered SQL per backend. Version N is MIGRATIONS[backend][N - 1].

A store records each applied version in `schema_version`; opening a store applies the missing ones in order, each
in its own transaction. Add a migration by appending to both lists (never edit an applied one). Version 1 uses
IF NOT EXISTS, so a SQLite file written before versioning upgrades in place.
"""

from __future__ import annotations

SQLITE: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS runs (
      run_id TEXT PRIMARY KEY, command TEXT, started REAL, finished REAL, config TEXT, summary TEXT
    );
    CREATE TABLE IF NOT EXISTS verdicts (
      id INTEGER PRIMARY KEY AUTOINCREMENT,
      run_id TEXT, email_id TEXT, stage TEXT, model TEXT, prompt_hash TEXT,
      attempt INTEGER, raw TEXT, finish_reason TEXT, status TEXT, findings TEXT, action TEXT,
      tokens_in INTEGER, tokens_out INTEGER, latency_ms REAL, cached INTEGER,
      schema TEXT, context TEXT, email_body TEXT, created REAL
    );
    CREATE INDEX IF NOT EXISTS verdicts_stage ON verdicts(stage, prompt_hash, model);
    CREATE TABLE IF NOT EXISTS llm_cache (key TEXT PRIMARY KEY, response TEXT, created REAL);
    CREATE TABLE IF NOT EXISTS search_cache (key TEXT PRIMARY KEY, hits TEXT, created REAL);
    """,
    "CREATE INDEX IF NOT EXISTS verdicts_run ON verdicts(run_id);",
)

POSTGRES: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS runs (
      run_id TEXT PRIMARY KEY, command TEXT, started DOUBLE PRECISION, finished DOUBLE PRECISION, config TEXT,
      summary TEXT
    );
    CREATE TABLE IF NOT EXISTS verdicts (
      id BIGSERIAL PRIMARY KEY,
      run_id TEXT, email_id TEXT, stage TEXT, model TEXT, prompt_hash TEXT,
      attempt INTEGER, raw TEXT, finish_reason TEXT, status TEXT, findings TEXT, action TEXT,
      tokens_in INTEGER, tokens_out INTEGER, latency_ms DOUBLE PRECISION, cached INTEGER,
      schema TEXT, context TEXT, email_body TEXT, created DOUBLE PRECISION
    );
    CREATE INDEX IF NOT EXISTS verdicts_stage ON verdicts(stage, prompt_hash, model);
    CREATE TABLE IF NOT EXISTS llm_cache (key TEXT PRIMARY KEY, response TEXT, created DOUBLE PRECISION);
    CREATE TABLE IF NOT EXISTS search_cache (key TEXT PRIMARY KEY, hits TEXT, created DOUBLE PRECISION);
    """,
    "CREATE INDEX IF NOT EXISTS verdicts_run ON verdicts(run_id);",
)

MIGRATIONS: dict[str, tuple[str, ...]] = {"sqlite": SQLITE, "postgres": POSTGRES}
LATEST = len(SQLITE)
assert len(POSTGRES) == LATEST, "every migration exists for both backends"


def statements(script: str) -> list[str]:
    """The statements of a migration script (none of ours has a ';' inside a literal)."""
    return [s.strip() for s in script.split(";") if s.strip()]
