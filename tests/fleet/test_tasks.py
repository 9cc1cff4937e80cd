"""The agent's and engine's session helper ends even when a task will not end on cancel."""

from __future__ import annotations

import asyncio
import logging

import pytest

from clustertui.backend.etcd import EtcdError
from clustertui.backend.fleet import tasks
from clustertui.backend.fleet.tasks import first_completed, raise_if_cancelling, wait_event


async def test_a_task_that_swallows_its_cancel_does_not_hold_the_session_for_ever(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, first_completed awaited every cancelled task without a bound: one that turned
    its cancel into an error its loop retried kept an agent from ever registering again."""
    monkeypatch.setattr(tasks, "CANCEL_GRACE", 0.3)
    lost = asyncio.Event()
    quit_for_good = asyncio.Event()

    async def stubborn() -> None:
        while not quit_for_good.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue  # what a retry loop does with a cancel disguised as an error

    async def lose_the_lease() -> None:
        await asyncio.sleep(0.05)
        lost.set()

    stuck = asyncio.ensure_future(stubborn())
    stuck.set_name("stubborn-loop")
    with caplog.at_level(logging.WARNING):
        await asyncio.wait_for(first_completed(lost.wait(), stuck, lose_the_lease()), 3)
    assert "stubborn-loop did not end when cancelled" in caplog.text
    quit_for_good.set()
    stuck.cancel()
    await asyncio.wait({stuck}, timeout=3)


async def test_a_stuck_coroutine_is_named_by_its_code_and_where_it_waits(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A coroutine handed in bare gets a task named for its function, and the warning shows
    the line it waits on: "Task-358 did not end when cancelled" told nothing."""
    monkeypatch.setattr(tasks, "CANCEL_GRACE", 0.3)
    quit_for_good = asyncio.Event()

    async def holds_on() -> None:
        while not quit_for_good.is_set():
            try:
                await asyncio.sleep(10)  # the stuck line
            except asyncio.CancelledError:
                continue

    with caplog.at_level(logging.WARNING):
        await asyncio.wait_for(first_completed(holds_on(), asyncio.sleep(0.05)), 3)
    assert ".<locals>.holds_on (Task-" in caplog.text
    assert "did not end when cancelled" in caplog.text
    assert "await asyncio.sleep(10)  # the stuck line" in caplog.text
    quit_for_good.set()
    stuck = [task for task in asyncio.all_tasks() if "holds_on" in task.get_name()]
    for task in stuck:
        task.cancel()
    await asyncio.wait(stuck, timeout=3)


async def test_a_retry_loop_ends_when_its_cancel_comes_back_as_an_error() -> None:
    attempts = 0

    async def retrying() -> None:
        nonlocal attempts
        while True:
            attempts += 1
            try:
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    raise EtcdError("the call was cancelled") from None  # as grpc may answer
            except EtcdError:
                raise_if_cancelling()
                continue

    task = asyncio.create_task(retrying())
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.wait({task}, timeout=3)
    assert task.cancelled()
    assert attempts == 1


async def test_a_cancel_that_lands_as_the_wait_ends_is_not_lost() -> None:
    """The event is set and the task cancelled in the same turn of the loop: the loop ends.
    With asyncio.wait_for (Python 3.11) the wait returned normally and the loop ran on: the
    agent's reconcile loop outlived its session in a soak that way."""
    event = asyncio.Event()
    passes = 0

    async def reconcile_loop() -> None:
        nonlocal passes
        while True:
            await wait_event(event, 10)
            event.clear()
            passes += 1

    task = asyncio.create_task(reconcile_loop())
    await asyncio.sleep(0)
    event.set()
    task.cancel()
    await asyncio.wait({task}, timeout=3)
    assert task.cancelled() and passes == 0
    assert await wait_event(asyncio.Event(), 0.01) is False
    done = asyncio.Event()
    done.set()
    assert await wait_event(done, 0.01) is True
