"""Email text is untrusted data: make chat-template control tokens and role markers in it inert.

A customer can write `<|im_end|>\\n<|im_start|>system\\n...` in an email. The llama.cpp server renders the chat
template and tokenizes the result with special tokens parsed, so such text would open a new system turn. The same
goes for the tags the prompts put around the email (`<email>` ... `</email>`): an email must not close its own.

`neutralise` rewrites each matched token, and only the token, by swapping its ASCII brackets for look-alikes:
`<` -> `‹` (U+2039), `>` -> `›` (U+203A), `[` -> `⁅` (U+2045), `]` -> `⁆` (U+2046). So `<|im_start|>` becomes
`‹|im_start|›` and `[INST]` becomes `⁅INST⁆`: still readable to a person, no longer a token to any tokenizer
(none of the look-alikes has an NFKC decomposition back to ASCII). Every replacement is one character for one,
so lengths and offsets are kept. Matched, case-insensitively and with spaces or tabs allowed inside:

* any `<|...|>` token (ChatML, Llama 3, Phi, ...; also DeepSeek's full-width `<｜...｜>`);
* `<<SYS>>`, `<</SYS>>`, `[INST]`, `[/INST]`, `[SYSTEM_PROMPT]`, `[/SYSTEM_PROMPT]` (Llama 2, Mistral);
* `<s>`, `</s>`, `<bos>`, `<eos>`, `<pad>`, `<unk>`, `<filename>`, `<reponame>` and their closing forms;
* snake_case tags such as Gemma's `<start_of_turn>` / `<end_of_turn>` and StarCoder's `<file_sep>`;
* the prompts' delimiter tags `<email>` and `</email>`.

Ordinary text (`x < y`, `a|b`, `<3`, `<b>`, `<a@b.c>`) is left alone. The result contains no match, so
`neutralise` is idempotent, and any prefix of its result contains none either: cutting neutralised text to a
length cannot leave half a token that recombines.
"""

from __future__ import annotations

import re

from mailcascade.types import Email

DELIMITER_TAGS = ("email",)
_W = r"[ \t]*"
_NAMES = "|".join(("s", "bos", "eos", "pad", "unk", "filename", "reponame", *DELIMITER_TAGS))
_TOKEN = re.compile(
    "|".join((
        rf"<{_W}[|｜]{_W}[^\s<>|｜]{{1,64}}{_W}[|｜]{_W}>",  # <|im_start|>, <|eot_id|>, <｜begin▁of▁sentence｜>
        rf"<<{_W}/?{_W}sys{_W}>>",  # <<SYS>>, <</SYS>>
        rf"\[{_W}/?{_W}(?:inst|system_prompt){_W}\]",  # [INST], [/INST]
        rf"<{_W}/?{_W}(?:{_NAMES}|[a-z][a-z0-9]*(?:_[a-z0-9]+)+){_W}>",  # <s>, </s>, <start_of_turn>, </email>
    )),
    re.IGNORECASE,
)
_SAFE = str.maketrans({"<": "‹", ">": "›", "[": "⁅", "]": "⁆"})


def neutralise(text: str) -> str:
    """`text` with every control token and delimiter tag made inert (see the module docstring)."""
    while True:  # each pass removes ASCII brackets, so this ends; repeat in case a removal exposed a new match
        done = _TOKEN.sub(lambda m: m.group(0).translate(_SAFE), text)
        if done == text:
            return done
        text = done


def prompt_fields(email: Email, max_body_chars: int) -> dict[str, str]:
    """The email's subject and body as prompt values: neutralised, the body then cut to `max_body_chars`."""
    return {"subject": neutralise(email.subject), "body": neutralise(email.body)[:max_body_chars]}
