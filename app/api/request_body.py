"""`RequestBody`: a request's body as a blocking binary file, for a parser in a worker thread.

A parser that reads a file (Arrow's streaming CSV reader) can then run beside the event loop
while the body is still arriving: each `read` asks the loop for the next chunks of the body
and waits for them. Arrow reads ahead of its parser on a thread of its own (up to 32 blocks), so
the reads are paced: past `ahead` bytes more than the parser has `taken`, a read waits until it
takes more (or the file is closed). Nothing is held whole, and a parser that stops early (a limit
passed) leaves the rest of the body unread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import threading

from starlette.requests import Request


class RequestBody(io.RawIOBase):
    """Create on the event loop; read from any other thread (never from the loop's own)."""

    def __init__(self, request: Request, *, ahead: int) -> None:
        super().__init__()
        self._chunks = request.stream()
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._done = False
        self._allowed = ahead  # bytes that may be read before the parser takes more
        self._pace = threading.Condition()
        self._pending: concurrent.futures.Future[bytes] | None = None
        # Why the body ended early (the client went away, the body passed the byte limit of
        # app.limits): the parser sees the end of the file; its caller raises this instead.
        self.problem: BaseException | None = None

    async def _next(self) -> bytes:
        return await self._chunks.__anext__()

    def taken(self, size: int) -> None:
        """The parser has used `size` more bytes: as many more may be read."""
        with self._pace:
            self._allowed += size
            self._pace.notify_all()

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all the rest for -1); fewer only at the end of the body (or once
        the file is closed)."""
        with self._pace:
            self._pace.wait_for(lambda: self._allowed > 0 or self.closed)
            if self.closed:
                return b""
            if size >= 0:
                self._allowed -= size
        while not self._done and (size < 0 or len(self._buffer) < size):
            with self._pace:
                if self.closed:  # the parser is done: a client still sending isn't waited for
                    return b""
                self._pending = asyncio.run_coroutine_threadsafe(self._next(), self._loop)
            try:
                chunk = self._pending.result()
            except StopAsyncIteration:
                self._done = True
            except concurrent.futures.CancelledError:  # closed while waiting for the client
                return b""
            except Exception as exc:  # noqa: BLE001 - kept, and raised by the caller
                self.problem = exc
                self._done = True
            else:
                self._buffer += chunk
        if size < 0 or size >= len(self._buffer):
            out = bytes(self._buffer)
            self._buffer.clear()
            return out
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        with self._pace:
            super().close()
            self._pace.notify_all()
            if self._pending is not None:
                self._pending.cancel()
