"""Many SSE clients in their own process (so they don't share the server's CPU in the test).

python -m tests.web.sse_swarm PORT COUNT PATH [PATH ...]: opens COUNT streams spread over the
paths, reads and discards until killed, and prints the bytes received every second.
"""

from __future__ import annotations

import asyncio
import sys


async def client(port: int, path: str, received: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    while chunk := await reader.read(65536):
        received[0] += len(chunk)


async def main(port: int, count: int, paths: list[str]) -> None:
    received = [0]
    tasks = [asyncio.create_task(client(port, paths[i % len(paths)], received)) for i in range(count)]
    print("connected", flush=True)
    while True:
        await asyncio.sleep(1)
        print(received[0], flush=True)
        if all(t.done() for t in tasks):
            return


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]))
