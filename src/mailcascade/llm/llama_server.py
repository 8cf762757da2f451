"""`python -m mailcascade.llm.llama_server ARGS`: llama-cpp-python's server (same arguments) with one more chat
format, `gemma3`, greedy decoding under a grammar that checks the chosen token first (`ChosenTokenGrammar`), and
that stops when the process that started it is gone.

The parent normally stops it (`LocalServer.stop`), but a parent that is killed, or exits at once on SIGTERM while a
worker thread holds the server (`mailcascade eval`, whose work runs in a worker: `mailcascade.interrupt`), cannot:
the server would be left running on the port. So it watches its parent (`exit_with_parent`).

Gemma 3 has no system role. Its own chat template (Google's, which the shipped GGUF does not carry) opens the first
user turn with the system text and a blank line; llama-cpp-python's built-in `gemma` format drops system messages
instead, which would drop the route and draft instructions. `gemma3` does what Google's template does.
"""

from __future__ import annotations

import ctypes
import inspect
import math
import os
import signal
import threading
import time
from typing import Any

import numpy as np
from llama_cpp import _internals, llama_chat_format, llama_cpp, llama_types
from llama_cpp.llama import Llama
from llama_cpp.llama_grammar import LlamaGrammar

GEMMA3_FORMAT = "gemma3"


def format_gemma3(messages: list[llama_types.ChatCompletionRequestMessage],
                  **kwargs: Any) -> llama_chat_format.ChatFormatterResponse:
    """`<start_of_turn>user|model ... <end_of_turn>` turns, system text first in the first user turn."""
    system = "\n\n".join(str(m.get("content") or "") for m in messages if m["role"] == "system")
    turns: list[str] = []
    for message in messages:
        role, content = message["role"], str(message.get("content") or "")
        if role == "system":
            continue
        if role == "user" and system and not turns:
            content, system = f"{system}\n\n{content}", ""
        turns.append(f"<start_of_turn>{'model' if role == 'assistant' else 'user'}\n{content}<end_of_turn>\n")
    if system:  # only system messages: they are the user turn
        turns.append(f"<start_of_turn>user\n{system}<end_of_turn>\n")
    return llama_chat_format.ChatFormatterResponse(prompt="".join(turns) + "<start_of_turn>model\n",
                                                   stop="<end_of_turn>")


def register() -> None:
    llama_chat_format.register_chat_format(GEMMA3_FORMAT)(format_gemma3)


class ChosenTokenGrammar:
    """Greedy sampling under a grammar (a `json_object` request with a schema) that asks the grammar about the
    chosen token only, and about the whole vocabulary only when it rejects that token, as llama.cpp's own server
    does. llama-cpp-python's sampler chain runs the grammar over all 49,152 SmolLM2 tokens at every step (~8.5 ms a
    token, against ~14 ms for the F16 model to produce it). Same tokens: the highest-scoring token the grammar
    accepts is the highest-scoring token when the grammar accepts it, and otherwise the grammar masks the rest as
    the chain would (ties go to the lowest token id either way). The repetition penalties run first, as in the
    chain. Used for temperature 0 only, where this is exact; every other request keeps the library's sampler."""

    def __init__(self, llama: Llama, grammar: LlamaGrammar, repeat_penalty: float, frequency_penalty: float,
                 presence_penalty: float) -> None:
        self._n_vocab = llama.n_vocab()
        self._penalties = _internals.LlamaSampler()  # type: ignore[no-untyped-call]
        self._penalties.add_penalties(n_vocab=self._n_vocab, penalty_last_n=llama.last_n_tokens_size,
                                      penalty_repeat=repeat_penalty, penalty_freq=frequency_penalty,
                                      penalty_present=presence_penalty)
        self._grammar = _internals.LlamaSampler()  # type: ignore[no-untyped-call]
        self._grammar.add_grammar(llama._model, grammar)
        self._data = (llama_cpp.llama_token_data * self._n_vocab)()
        self._view = np.ctypeslib.as_array(self._data)  # fields id, logit, p: a view on the same memory
        # ids and p are set once: the penalties and the grammar only change logits, in place (so index == token id)
        self._view["id"] = np.arange(self._n_vocab, dtype=np.int32)
        self._view["p"] = 0.0
        self._one = (llama_cpp.llama_token_data * 1)()
        self.steps = 0
        self.full_masks = 0  # steps where the grammar rejected the highest-scoring token

    def _apply(self, sampler: _internals.LlamaSampler, data: ctypes.Array[llama_cpp.llama_token_data],
               size: int) -> None:
        array = llama_cpp.llama_token_data_array(data=data, size=size, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(sampler.sampler, ctypes.byref(array))

    def sample(self, ctx: _internals.LlamaContext, idx: int = -1) -> int:
        logits = llama_cpp.llama_get_logits_ith(ctx.ctx, idx)
        view = self._view
        view["logit"] = np.ctypeslib.as_array(logits, shape=(self._n_vocab,))
        self._apply(self._penalties, self._data, self._n_vocab)
        token = int(np.argmax(view["logit"]))
        self.steps += 1
        self._one[0] = llama_cpp.llama_token_data(token, float(view["logit"][token]), 0.0)
        self._apply(self._grammar, self._one, 1)
        if math.isinf(self._one[0].logit):  # rejected: mask the whole vocabulary, as the chain does
            self.full_masks += 1
            self._apply(self._grammar, self._data, self._n_vocab)
            token = int(np.argmax(view["logit"]))
        self._penalties.accept(token)
        self._grammar.accept(token)
        return token


_LIBRARY_INIT_SAMPLER = Llama._init_sampler
_INIT_SAMPLER_SIGNATURE = inspect.signature(_LIBRARY_INIT_SAMPLER)


def _init_sampler(self: Llama, *args: Any, **kwargs: Any) -> Any:
    bound = _INIT_SAMPLER_SIGNATURE.bind(self, *args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    if a["grammar"] is not None and a["temp"] == 0.0 and a["logits_processor"] is None:
        return ChosenTokenGrammar(self, a["grammar"], a["repeat_penalty"], a["frequency_penalty"],
                                  a["presence_penalty"])
    return _LIBRARY_INIT_SAMPLER(self, *args, **kwargs)


def use_chosen_token_grammar() -> None:
    """Sample greedy grammar-constrained requests with `ChosenTokenGrammar` (in this process)."""
    Llama._init_sampler = _init_sampler  # type: ignore[method-assign]


def exit_with_parent(poll_s: float = 0.5, grace_s: float = 10.0) -> None:
    """Stop this process (SIGTERM, so uvicorn shuts down; killed after `grace_s`) once its parent is gone: an orphan
    is re-parented, so `os.getppid()` changes."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


if __name__ == "__main__":
    from llama_cpp.server.__main__ import main

    exit_with_parent()
    register()
    use_chosen_token_grammar()
    main()  # type: ignore[no-untyped-call]
