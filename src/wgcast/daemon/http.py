"""The daemon's minimal HTTP/1.1 (one request per connection, GET/HEAD only), shared by
the metrics endpoint and the catchment page: a bounded request head, bounded time,
Connection: close. Small enough that a web framework would be the larger risk."""

from __future__ import annotations

import asyncio
import contextlib

#: Bytes of a request head at most (asyncio's stream limit).
MAX_REQUEST = 8192
#: Seconds a client may take to send its request or read the reply.
REQUEST_TIMEOUT = 5.0


async def read_request_line(reader: asyncio.StreamReader) -> tuple[str, str]:
    """(method, target) of the request on `reader`; ValueError when it is not HTTP."""
    head = await reader.readuntil(b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise ValueError(line)
    return parts[0], parts[1]


async def reply(writer: asyncio.StreamWriter, status: str, body: bytes, ctype: str,
                headers: str = "") -> None:
    """Send one response and close; a client gone or too slow is not an error."""
    try:
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {len(body)}\r\n{headers}Connection: close\r\n\r\n"
                     .encode() + body)
        await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
