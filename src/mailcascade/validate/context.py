"""What the validator knows beyond the schema: configured departments, retrieved products, prompt text."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ValidationContext:
    """Grounding facts for one call. Paths are dotted ("department", "draft.product_ids") or JSON paths ("$.reply").

    departments: the configured department names (None: not checked).
    known_product_ids: the product ids retrieved for this email (None: not checked).
    prompt_texts: system prompt and instruction text that must not be copied into `text_paths`.
    """

    departments: tuple[str, ...] | None = None
    department_path: str = "department"
    known_product_ids: tuple[str, ...] | None = None
    product_ids_path: str = "product_ids"
    prompt_texts: tuple[str, ...] = ()
    text_paths: tuple[str, ...] = ("reply",)
