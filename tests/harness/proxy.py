"""Provides a loopback TCP proxy whose path can be cut and healed, to partition one node.

A cut is a partition, not a refusal: bytes stop flowing both ways on the open connections
(they wait in the kernel's buffers, as TCP retransmits do) and new connections are taken but
not forwarded. Healing lets everything flow again. ``reset`` closes every connection instead,
as a restarted middlebox does. The proxy runs its own event loop in a thread, so a test's
loop, or a frozen test, never holds it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field

from tests.harness.procs import free_port


@dataclass
class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target_host``:``target_port`` until cut."""

    target_host: str
    target_port: int
    port: int = field(default_factory=free_port)
    cuts: int = 0
    refusing: bool = False
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _open: asyncio.Event | None = None
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @classmethod
    def to_url(cls, url: str) -> TcpProxy:
        """A proxy in front of the store at ``url`` (http://127.0.0.1:PORT)."""
        host, _, port = url.split("://", 1)[-1].rstrip("/").rpartition(":")
        return cls(host.strip("[]"), int(port)).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            self._open = asyncio.Event()
            self._open.set()

            async def main() -> None:
                self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
                ready.set()

            loop.run_until_complete(main())
            loop.run_forever()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=serve, name=f"proxy-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def _call(self, function: object) -> None:
        assert self._loop is not None
        done = threading.Event()

        def run() -> None:
            try:
                function()  # type: ignore[operator]
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(5)

    def cut(self) -> None:
        """Stop every byte both ways, on open connections and new ones alike."""
        self.cuts += 1
        self._call(lambda: self._open.clear())  # type: ignore[union-attr]

    def refuse(self) -> None:
        """Reset every connection and refuse new ones: the client sees errors, not silence."""
        self.cuts += 1
        self.refusing = True
        self.reset()

    def heal(self) -> None:
        self.refusing = False
        self._call(lambda: self._open.set())  # type: ignore[union-attr]

    @property
    def is_cut(self) -> bool:
        return self._open is not None and not self._open.is_set()

    def reset(self) -> None:
        """Close every open connection (the clients see a reset and dial again)."""

        def close_all() -> None:
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        self._call(close_all)

    def stop(self) -> None:
        if self._loop is None:
            return
        loop = self._loop

        def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            loop.stop()

        loop.call_soon_threadsafe(shutdown)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._open is not None
        if self.refusing:
            writer.transport.abort()
            return
        self._writers.add(writer)
        try:
            await self._open.wait()
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                return
            self._writers.add(up_writer)
            try:
                await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
            finally:
                up_writer.transport.abort()
                self._writers.discard(up_writer)
        finally:
            writer.transport.abort()
            self._writers.discard(writer)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._open is not None
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                # While cut nothing is read, so the sender's buffers fill as in a partition.
                await self._open.wait()
                data = await reader.read(65536)
                if not data:
                    break
                # Bytes read just before a cut wait for the heal too.
                await self._open.wait()
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
