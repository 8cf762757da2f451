"""The validator's vocabulary: one stable snake_case code per failure mode."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

CODES: Mapping[str, str] = MappingProxyType({
    # extraction: where is the JSON?
    "empty_output": "nothing but whitespace",
    "refusal": "the model declined (\"I'm sorry, I can't ...\") and gave no JSON",
    "no_json": "prose with no JSON value in it",
    "prefix_text": "text before the JSON (\"Sure! Here is the JSON:\")",
    "suffix_text": "text after the JSON (\"Let me know if ...\")",
    "code_fence": "JSON inside a markdown fence, with or without a language tag",
    "reasoning_leak": "a reasoning block (<think>...</think> and the like) before or around the JSON",
    "multiple_json": "more than one JSON candidate",
    "truncated": "cut off: finish_reason == \"length\", or unbalanced at the end of the text",
    "schema_echo": "the model returned the JSON Schema instead of an instance of it",
    # syntax: is it JSON?
    "single_quotes": "strings or keys in single quotes, or typographic (curly) quotes",
    "trailing_comma": "a comma before } or ]",
    "missing_comma": "two members or items with no comma between them",
    "unquoted_key": "an object key without quotes",
    "comments": "// or /* */ comments",
    "python_literal": "True, False, None",
    "non_finite_number": "NaN, Infinity",
    "control_char": "a raw newline or other control character inside a string",
    "invalid_escape": "a backslash escape JSON does not allow, such as \\' or \\x",
    "unescaped_quote": "a double quote inside a string that was not escaped",
    "unbalanced_brackets": "a stray or missing bracket that is not truncation",
    "malformed_json": "unparseable in any other way",
    # schema: is it the right JSON?
    "wrong_top_level": "right object, wrong wrapping (a list around it, {\"response\": {...}}, a JSON string)",
    "missing_field": "a required field is absent",
    "extra_field": "a field the schema does not allow",
    "wrong_type": "a value of the wrong type, coercible (\"0.9\") or not",
    "enum_violation": "a value outside the allowed set (near miss or far)",
    "constraint_violation": "a length, range, pattern or format constraint broken",
    "placeholder_value": "a template placeholder or filler instead of a value (<department>, N/A)",
    # grounding: is it true to the context?
    "unknown_department": "a department that is not configured",
    "unknown_product_id": "a cited product id that was not among the retrieved hits",
    "prompt_leak": "prompt text (system prompt, instructions) copied into the output",
})
