"""Request and response bodies of the HTTP API. The result record itself is `mailcascade.record.ResultRecord`,
the same model `mailcascade run` writes its JSONL with."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mailcascade.record import ResultRecord

Outcome = Literal["sent_as_is", "edited", "rewritten", "rerouted", "discarded"]
OUTCOMES: tuple[str, ...] = ("sent_as_is", "edited", "rewritten", "rerouted", "discarded")


class EmailIn(BaseModel):
    """One email in the JSON input shape of `mailcascade run`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str = Field(min_length=1, max_length=500)
    subject: str = ""
    body: str = ""
    sender: str = Field("", alias="from")


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    emails: list[EmailIn] = Field(min_length=1)


class BatchAccepted(BaseModel):
    id: str
    status: Literal["queued"] = "queued"


class BatchOut(BaseModel):
    id: str
    status: Literal["queued", "running", "done"]
    size: int = Field(description="emails in the batch")
    done: int = Field(description="emails with a result so far")
    results: list[ResultRecord] = Field(description="the finished results, in batch order")


class FeedbackIn(BaseModel):
    """What the agent did with the draft: the department the email went to, the reply sent, and how."""

    model_config = ConfigDict(extra="forbid")

    department: str = Field(min_length=1)
    sent_reply: str = ""
    outcome: Outcome


class FeedbackOut(BaseModel):
    id: str
    email_id: str


class ErrorOut(BaseModel):
    error: str = Field(description="one line saying what to fix")


class Check(BaseModel):
    ok: bool
    detail: str


class ReadyOut(BaseModel):
    ready: bool
    checks: dict[str, Check]


class HealthOut(BaseModel):
    status: Literal["ok"] = "ok"
