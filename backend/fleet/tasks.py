"""Provides the task helpers the agent and engine share: first-completed and change watches."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable

from clustertui.backend.etcd import EtcdClient, EtcdError, RevisionCompacted
from clustertui.backend.keys import prefix_end

log = logging.getLogger(__name__)


CANCEL_GRACE = 5.0
"""How long :func:`first_completed` waits for the losers to end once cancelled."""


def _retrieve(task: asyncio.Future[object]) -> None:
    """Consume a finished task's outcome (its error was the winner's business, or nothing)."""
    if not task.cancelled():
        task.exception()


def raise_if_cancelling() -> None:
    """Re-raise a cancel that a library turned into an error (grpc may answer a cancelled
    call with a CANCELLED status): a retry loop must not outlive its own cancellation."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout`` passes; true if it was set. A cancel always
    goes through: ``asyncio.wait_for`` on Python 3.11 loses one that lands as the wait ends
    (a soak found an agent's reconcile loop running on, cancelled, for that reason)."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


def _where(task: asyncio.Task[object]) -> str:
    """Where a task is suspended, innermost frame last, as a traceback shows it."""
    frames = traceback.StackSummary.extract((f, f.f_lineno) for f in task.get_stack())
    return "".join(frames.format()).rstrip() or "  (no frames)"


def _named(awaitable: Awaitable[object]) -> asyncio.Task[object]:
    """A task named for what it runs (``Agent.run.<locals>.stop_requested``, not ``Task-358``),
    so a task that outlives its cancel is named in the log by its code."""
    task = asyncio.ensure_future(awaitable)
    name = getattr(awaitable, "__qualname__", None)
    if name is not None:
        task.set_name(f"{name} ({task.get_name()})")
    return task


async def first_completed(*awaitables: Awaitable[object]) -> None:
    """Run the awaitables until the first finishes, cancel the rest, and re-raise its failure."""
    tasks = [_named(a) for a in awaitables]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        # Bounded: a task that does not end when cancelled (a library that turns the cancel
        # into an error its loop retries) must not hold the caller for ever; it is named in
        # the log and left cancelled.
        _, stuck = await asyncio.wait(tasks, timeout=CANCEL_GRACE)
        for task in stuck:
            log.warning(
                "%s did not end when cancelled; leaving it cancelled. It waits at:\n%s",
                task.get_name(),
                _where(task),
            )
            task.add_done_callback(_retrieve)
        for task in set(tasks) - stuck:
            _retrieve(task)
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
            raise_if_cancelling()
            if delay == 0.2:
                log.warning("%s: watch dropped (%s); reconnecting", what, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
