"""The fake OpenAI-compatible server (tests/fakeserver.py, `sensible` responder) in a process of its own.

A real model server is another process; run in the benchmark's own process, the fake server's Python HTTP handling
would compete with the pipeline for the GIL (at 64 in flight that is most of what the process does).

    python bench/fakeserver_process.py --latency 0.3     # prints the port, serves until SIGTERM or SIGINT

    with ServerProcess(latency_s=0.3) as server:
        server.base_url                                   # http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]


class ServerProcess:
    """Starts this script as a child process, reads its port; stops it (by its pid) on exit."""

    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self._proc: subprocess.Popen[str] | None = None
        self._port = 0

    def __enter__(self) -> ServerProcess:
        self._proc = subprocess.Popen([sys.executable, __file__, "--latency", str(self.latency_s)],
                                      stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.strip().isdigit():
            self.__exit__()
            raise RuntimeError(f"the fake server process did not print its port (got {line!r})")
        self._port = int(line)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=30)
            self._proc = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added before every reply")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT / "tests")]
    from fakes import sensible
    from fakeserver import FakeServer

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with FakeServer(sensible, latency_s=args.latency) as server:
        print(server.port, flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
