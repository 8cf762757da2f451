"""Collect raw outputs from the local SmolLM2 server into smollm2_raw.jsonl (run by hand, not by pytest).

Start the server first, on loopback:
    .venv/bin/python -m llama_cpp.server --model <SmolLM2 GGUF> --host 127.0.0.1 --port 18231 --n_ctx 2048
then: .venv/bin/python tests/corpus/validator/collect_smollm2.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from openai import OpenAI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
DEPARTMENTS = ["orders", "shipping", "returns", "billing", "products", "account", "general", "out_of_scope"]
ROUTE_SYSTEM = (
    "You route customer emails for an online store to one department. Departments: orders (order status, "
    "cancelling), shipping (delivery, tracking), returns (refunds, exchanges), billing (payments, invoices), "
    "products (product questions), account (login, profile), general (anything else), out_of_scope (not about "
    'the store). Reply with only a JSON object: {"department": "<department>", "confidence": <number 0..1>, '
    '"reason": "<one short sentence>"}.'
)
DRAFT_SYSTEM = (
    "You are a friendly support agent for an online store. Write a short reply to the customer email, using only "
    "the product facts below. Reply with only a JSON object: "
    '{"reply": "<the email reply>", "product_ids": ["<ids of the products you used>"]}.'
)


def main() -> int:
    schemas = json.loads((HERE / "schemas.json").read_text(encoding="utf-8"))
    emails = [json.loads(line) for line in (ROOT / "data" / "sample_emails.jsonl").read_text().splitlines() if line]
    catalog = [json.loads(line) for line in (ROOT / "src/mailcascade/data/catalog.jsonl").read_text().splitlines()
               if line.strip()]
    client = OpenAI(base_url="http://127.0.0.1:18231/v1", api_key="not-needed", timeout=120)
    out: list[dict[str, Any]] = []
    for i in range(56):
        email = emails[i % len(emails)]["email"]
        text = f"Subject: {email['subject']}\n\n{email['body']}"
        stage = "route" if i % 2 == 0 else "draft"
        structured = (i // 2) % 2 == 0 and i < 40
        max_tokens = [24, 64, 160, 320][(i // 4) % 4] if i < 40 else 200
        if i >= 40:  # unstructured, but asked twice for JSON: chatter, fences and near-JSON
            text += "\n\nAnswer with the JSON object only, as described."
        if stage == "route":
            schema_name, messages = "route", [{"role": "system", "content": ROUTE_SYSTEM},
                                              {"role": "user", "content": text}]
        else:
            products = catalog[(i * 7) % len(catalog): (i * 7) % len(catalog) + 2]
            facts = "\n".join(f"[{p['id']}] {p['title']}: {p['description'][:200]}" for p in products)
            schema_name = "draft"
            messages = [{"role": "system", "content": DRAFT_SYSTEM + "\n\nProducts:\n" + facts},
                        {"role": "user", "content": text}]
        kwargs: dict[str, Any] = {}
        if structured:
            kwargs["response_format"] = {"type": "json_object", "schema": schemas[schema_name]}
        resp = client.chat.completions.create(model="smollm2", messages=messages,  # type: ignore[arg-type]
                                              max_tokens=max_tokens, temperature=0.7, seed=i, **kwargs)
        choice = resp.choices[0]
        raw = choice.message.content or ""
        item = {"id": f"smollm2-{i:02d}", "stage": stage, "schema": schema_name, "structured": structured,
                "max_tokens": max_tokens, "raw": raw, "finish_reason": choice.finish_reason,
                "prompt": messages[0]["content"]}
        out.append(item)
        print(item["id"], stage, structured, max_tokens, choice.finish_reason, repr(raw[:80]), flush=True)
    with (HERE / "smollm2_raw.jsonl").open("w", encoding="utf-8") as fh:
        for item in out:
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
