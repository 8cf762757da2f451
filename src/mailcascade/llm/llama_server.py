"""`python -m mailcascade.llm.llama_server ARGS`: llama-cpp-python's server (same arguments) with one more chat
format, `gemma3`, that stops when the process that started it is gone.

The parent normally stops it (`LocalServer.stop`), but a parent that is killed, or exits at once on SIGTERM while a
worker thread holds the server (`mailcascade eval`, whose work runs in a worker: `mailcascade.interrupt`), cannot:
the server would be left running on the port. So it watches its parent (`exit_with_parent`).

Gemma 3 has no system role. Its own chat template (Google's, which the shipped GGUF does not carry) opens the first
user turn with the system text and a blank line; llama-cpp-python's built-in `gemma` format drops system messages
instead, which would drop the route and draft instructions. `gemma3` does what Google's template does.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from llama_cpp import llama_chat_format, llama_types

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
    main()  # type: ignore[no-untyped-call]
