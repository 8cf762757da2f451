"""The fake OpenAI-compatible server (tests/fakeserver.py, `sensible` responder) in a process of its own.

A real model server is another process; run in the benchmark's own process, the fake server's Python HTTP handling
would compete with the pipeline for the GIL (at 64 in flight that is most of what the process does).

    python bench/fakeserver_process.py --latency 0.3     # prints the port, serves until SIGTERM or SIGINT
                                                          # (or, with --parent PID, until that process is gone)

    with ServerProcess(latency_s=0.3) as server:
        server.base_url                                   # http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class ServerProcess:
    """Starts this script as a child process, reads its port; stops it (by its pid) on exit."""

    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self._proc: subprocess.Popen[str] | None = None
        self._port = 0

    def __enter__(self) -> ServerProcess:
        # --parent: a benchmark killed before its `with` block ends (SIGTERM, SIGKILL) leaves no server behind
        self._proc = subprocess.Popen([sys.executable, __file__, "--latency", str(self.latency_s),
                                       "--parent", str(os.getpid())], stdout=subprocess.PIPE, text=True)
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


async def serve(latency_s: float, stop: asyncio.Event) -> None:
    """HTTP/1.1 with keep-alive on asyncio: a request costs this process a fraction of a millisecond, as a real model
    server's costs the client's machine nothing (tests/fakeserver.py's thread per connection and "Connection: close"
    took about as much CPU as the client under test, and a new TCP connection per call)."""
    sys.path[:0] = [str(ROOT / "tests")]
    from fakes import sensible
    from fakeserver import FakeServer, Reply

    fake = FakeServer(sensible)  # its responder and completion bodies; its own HTTP server is not started

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                lines = head.decode("latin-1").split("\r\n")
                method, path = lines[0].split(" ")[:2]
                headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
                body = json.loads(await reader.readexactly(int(headers.get("content-length", "0")))) \
                    if method == "POST" else None
                if method == "POST" and path.rstrip("/") == "/v1/chat/completions" and isinstance(body, dict):
                    if latency_s:
                        await asyncio.sleep(latency_s)
                    step = sensible(body)
                    code, payload = (200, fake._completion(step, body)) if isinstance(step, Reply) else (500, {})
                else:
                    code, payload = 404, {"error": {"message": f"no route for {method} {path}", "type": "not_found"}}
                data = json.dumps(payload).encode()
                writer.write(f"HTTP/1.1 {code} {'OK' if code == 200 else 'Error'}\r\nContent-Type: application/json"
                             f"\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client closed the connection, or this server is stopping
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added before every reply")
    parser.add_argument("--parent", type=int, help="stop when the process with this id is no longer this one's parent")
    args = parser.parse_args()

    async def orphaned(stop: asyncio.Event) -> None:
        while os.getppid() == args.parent:  # a dead parent's children are handed to another process
            await asyncio.sleep(0.5)
        stop.set()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        watch = asyncio.create_task(orphaned(stop)) if args.parent is not None else None
        await serve(args.latency, stop)
        if watch is not None:
            watch.cancel()

    asyncio.run(run())


if __name__ == "__main__":
    main()
