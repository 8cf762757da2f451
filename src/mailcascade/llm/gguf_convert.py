"""`python -m mailcascade.llm.gguf_convert SOURCE TARGET`: write SOURCE's weights to TARGET as F16 with llama.cpp's
own quantizer (dequantised: the same values, in a type llama.cpp's CPU kernels evaluate prompts faster in).

Run in a child process by `local_server.f16_gguf`, so llama.cpp's log goes to a pipe rather than the user's terminal.
"""

from __future__ import annotations

import ctypes
import os
import sys


def convert_to_f16(source: str, target: str) -> int:
    """llama.cpp's return code (0: written)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_F16
    params.allow_requantize = True  # the shipped GGUFs are quantised already
    params.nthread = os.cpu_count() or 1
    return int(llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params)))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m mailcascade.llm.gguf_convert SOURCE TARGET", file=sys.stderr)
        return 2
    return 0 if convert_to_f16(argv[0], argv[1]) == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
