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
    # 3: the HTTP service's batches (claimed and completed per email), its answers, and the agents' feedback
    """
    CREATE TABLE IF NOT EXISTS batches (
      batch_id TEXT PRIMARY KEY, stages TEXT NOT NULL, size INTEGER NOT NULL, created REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS batch_emails (
      batch_id TEXT NOT NULL, position INTEGER NOT NULL, email_id TEXT NOT NULL, email TEXT NOT NULL,
      state TEXT NOT NULL, claim TEXT, claims INTEGER NOT NULL, result TEXT, created REAL NOT NULL,
      updated REAL NOT NULL, PRIMARY KEY (batch_id, position)
    );
    CREATE INDEX IF NOT EXISTS batch_emails_state ON batch_emails(state, created, batch_id, position);
    CREATE INDEX IF NOT EXISTS batch_emails_claim ON batch_emails(claim);
    CREATE TABLE IF NOT EXISTS served (
      email_id TEXT PRIMARY KEY, record TEXT NOT NULL, subject TEXT, body TEXT, sender TEXT, created REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS feedback (
      feedback_id TEXT PRIMARY KEY, email_id TEXT NOT NULL, department TEXT NOT NULL, sent_reply TEXT NOT NULL,
      outcome TEXT NOT NULL, created REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS feedback_email ON feedback(email_id, created);
    """,
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
    """
    CREATE TABLE IF NOT EXISTS batches (
      batch_id TEXT PRIMARY KEY, stages TEXT NOT NULL, size INTEGER NOT NULL, created DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE IF NOT EXISTS batch_emails (
      batch_id TEXT NOT NULL, position INTEGER NOT NULL, email_id TEXT NOT NULL, email TEXT NOT NULL,
      state TEXT NOT NULL, claim TEXT, claims INTEGER NOT NULL, result TEXT, created DOUBLE PRECISION NOT NULL,
      updated DOUBLE PRECISION NOT NULL, PRIMARY KEY (batch_id, position)
    );
    CREATE INDEX IF NOT EXISTS batch_emails_state ON batch_emails(state, created, batch_id, position);
    CREATE INDEX IF NOT EXISTS batch_emails_claim ON batch_emails(claim);
    CREATE TABLE IF NOT EXISTS served (
      email_id TEXT PRIMARY KEY, record TEXT NOT NULL, subject TEXT, body TEXT, sender TEXT,
      created DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE IF NOT EXISTS feedback (
      feedback_id TEXT PRIMARY KEY, email_id TEXT NOT NULL, department TEXT NOT NULL, sent_reply TEXT NOT NULL,
      outcome TEXT NOT NULL, created DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX IF NOT EXISTS feedback_email ON feedback(email_id, created);
    """,
)

MIGRATIONS: dict[str, tuple[str, ...]] = {"sqlite": SQLITE, "postgres": POSTGRES}
LATEST = len(SQLITE)
assert len(POSTGRES) == LATEST, "every migration exists for both backends"


def statements(script: str) -> list[str]:
    """The statements of a migration script (none of ours has a ';' inside a literal)."""
    return [s.strip() for s in script.split(";") if s.strip()]
