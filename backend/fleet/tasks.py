"""Provides the one task combinator the agent and engine share: run until the first finishes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable


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
