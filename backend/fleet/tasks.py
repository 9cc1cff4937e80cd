"""Provides the task helpers the agent and engine share: first-completed and change watches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

from clustertui.backend.etcd import EtcdClient, EtcdError, RevisionCompacted
from clustertui.backend.keys import prefix_end

log = logging.getLogger(__name__)


async def first_completed(*awaitables: Awaitable[object]) -> None:
    """Run the awaitables until the first finishes, cancel the rest, and re-raise its failure."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    for task in done:
        error = task.exception()
        if error is not None:
            raise error


async def watch_changes(client: EtcdClient, base: bytes, changed: asyncio.Event, what: str) -> None:
    """Set ``changed`` whenever a key under ``base`` changes, for as long as it runs.

    After a drop the watch resumes from the revision after the last one seen, so nothing
    is missed; when that revision is compacted away it starts from now and sets
    ``changed``, and the reader re-reads everything. Reconnects back off up to 5 s.
    """
    revision = 0
    delay = 0.2
    while True:
        try:
            async for batch in client.watch_batches(
                base, prefix_end(base), start_revision=revision
            ):
                revision = batch.revision + 1
                delay = 0.2
                if batch.events:
                    changed.set()
        except RevisionCompacted:
            revision = 0
            changed.set()
        except EtcdError as error:
            if delay == 0.2:
                log.warning("%s: watch dropped (%s); reconnecting", what, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
