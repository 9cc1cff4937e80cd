"""Provides clusterctl's unit lifecycle: submit, load, start, stop, unload, destroy, restart."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clustertui.backend.fleet.model import (
    ClusterState,
    CurrentState,
    Job,
    TargetState,
    current_state,
    is_global,
    machine_legend,
)
from clustertui.backend.fleet.registry import UnitExists
from clustertui.backend.fleet.unitfile import (
    UnitFileError,
    UnitName,
    normalize_name,
    parse,
    unit_hash,
    validate_name,
)
from clustertui.console.ctl.session import CtlError, Session

POLL_SECONDS = 0.5


@dataclass
class LocalUnit:
    """A unit file found on disk for a name given on the command line."""

    name: str
    raw: str
    path: Path


def find_local_unit(arg: str) -> LocalUnit | None:
    """The unit file ``arg`` names on disk, or its template (``x@.service`` for ``x@1.service``)."""
    name = normalize_name(Path(arg).name)
    path = Path(arg)
    if not path.is_file():
        path = path.with_name(name)
    if path.is_file():
        return LocalUnit(name, _read_unit(path), path)
    parts = UnitName.parse(name)
    if parts.is_instance:
        template = path.with_name(parts.template)
        if template.is_file():
            return LocalUnit(name, _read_unit(template), template)
    return None


def _read_unit(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CtlError(f"failed reading unit file {path}: {error}") from error


async def lazy_create(ctl: Session, args: Sequence[str], *, replace: bool) -> list[str]:
    """Make sure each named unit is in the registry, submitting local files as needed."""
    names = []
    for arg in args:
        name = normalize_name(Path(arg).name)
        try:
            validate_name(name)
        except UnitFileError as error:
            raise CtlError(f"Error creating units: {error}") from None
        if UnitName.parse(name).is_template:
            raise CtlError(f"Error creating units: unable to start template unit {name}")
        local = find_local_unit(arg)
        existing = await ctl.registry.job(name)
        if existing is not None and (local is None or not replace):
            if local is not None and existing.unit_hash != unit_hash(local.raw):
                ctl.warn(f"WARNING: Unit {name} in registry differs from local unit file {arg}")
            names.append(name)
            continue
        if local is None:
            template = UnitName.parse(name).template
            if UnitName.parse(name).is_instance:
                source = await ctl.registry.job(template)
                if source is not None and source.unit is not None:
                    await _create(ctl, name, source.unit.raw, replace=replace)
                    names.append(name)
                    continue
                raise CtlError(
                    f"Error creating units: unable to find Unit({name}) or template "
                    f"Unit({template}) in Registry or on filesystem"
                )
            raise CtlError(
                f"Error creating units: unable to find Unit({name}) in Registry or on filesystem"
            )
        await _create(ctl, name, local.raw, replace=replace)
        names.append(name)
    return names


async def _create(ctl: Session, name: str, raw: str, *, replace: bool) -> None:
    try:
        parse(raw, name)
    except UnitFileError as error:
        raise CtlError(f"Error creating units: {error}") from None
    try:
        await ctl.registry.create_job(name, raw, replace=replace)
    except UnitExists as error:
        raise CtlError(f"Error creating units: {error}") from None


async def submit(ctl: Session) -> int:
    if not ctl.args.units:
        ctl.warn("No units given")
        return 0
    await lazy_create(ctl, ctl.args.units, replace=ctl.args.replace)
    return 0


async def set_and_wait(
    ctl: Session,
    names: Sequence[str],
    target: TargetState,
    verb: str,
    want: CurrentState,
    skip_same: bool,
) -> int:
    jobs = (await ctl.registry.snapshot(("job", "unit"))).jobs
    waiting = []
    for name in names:
        job = jobs.get(name)
        if job is None:
            raise CtlError(f"unable to find unit {name}")
        if skip_same and job.target_state == target:
            if not is_global(job):
                waiting.append(name)
            continue
        await ctl.registry.set_target_state(name, target)
        if is_global(job):
            ctl.say(f"Triggered global unit {name} {verb}")
        else:
            waiting.append(name)
    return await wait_for(ctl, waiting, verb, want)


def _block_attempts(ctl: Session) -> int:
    if getattr(ctl.args, "no_block", False):
        return -1
    return max(0, int(getattr(ctl.args, "block_attempts", 0) or 0))


async def wait_for(ctl: Session, names: Sequence[str], verb: str, want: CurrentState) -> int:
    """fleetctl's blocking: poll until each unit reports ``want``, or attempts run out."""
    attempts = _block_attempts(ctl)
    if attempts < 0:
        for name in names:
            ctl.say(f"Triggered unit {name} {verb}")
        return 0
    remaining = list(names)
    tries = 0
    while remaining:
        state = await ctl.registry.snapshot(("job", "machines", "states"))
        for name in list(remaining):
            job = state.jobs.get(name) or Job(name)
            current = current_state(job, state.states.get(name, {}))
            if want == "inactive" and job.target:
                # Unloaded means unscheduled too: wait for the engine to clear the target.
                current = "loaded"
            if current == want:
                remaining.remove(name)
                message = f"Unit {name} {current}"
                if job.target and job.target in state.machines:
                    legend = machine_legend(state.machines[job.target], job.target, False)
                    message += f" on {legend}"
                ctl.say(message)
        tries += 1
        if not remaining:
            break
        if attempts and tries >= attempts:
            for name in remaining:
                ctl.warn(
                    f"Error waiting for units: timed out waiting for unit {name} "
                    f"to report state {want}"
                )
            return 1
        await asyncio.sleep(POLL_SECONDS)
    return 0


async def load(ctl: Session) -> int:
    if not ctl.args.units:
        ctl.warn("No units given")
        return 0
    names = await lazy_create(ctl, ctl.args.units, replace=ctl.args.replace)
    return await set_and_wait(ctl, names, "loaded", "load", "loaded", True)


async def start(ctl: Session) -> int:
    if not ctl.args.units:
        ctl.warn("No units given")
        return 0
    names = await lazy_create(ctl, ctl.args.units, replace=ctl.args.replace)
    return await set_and_wait(ctl, names, "launched", "start", "launched", True)


async def _registered(ctl: Session, args: Sequence[str]) -> tuple[ClusterState, list[str]]:
    state = await ctl.registry.snapshot(("job", "unit", "states"))
    names = [normalize_name(Path(a).name) for a in args]
    return state, [n for n in names if n in state.jobs]


async def stop(ctl: Session) -> int:
    if not ctl.args.units:
        ctl.warn("No units given")
        return 0
    state, names = await _registered(ctl, ctl.args.units)
    stopping = []
    for name in names:
        job = state.jobs[name]
        if not is_global(job):
            current = current_state(job, state.states.get(name, {}))
            if current == "inactive":
                ctl.warn(f"Unable to stop unit {name} in state inactive")
                return 1
            if current == "loaded" and job.target_state != "launched":
                continue
        await ctl.registry.set_target_state(name, "loaded")
        if is_global(job):
            ctl.say(f"Triggered global unit {name} stop")
        else:
            stopping.append(name)
    code = await wait_for(ctl, stopping, "stop", "loaded")
    return _outcome(ctl, code, stopping, "stop", "stopped")


def _outcome(ctl: Session, code: int, names: list[str], verb: str, done: str) -> int:
    """fleetctl's closing line for a stop or unload that waited for ``names``; ``code``."""
    listed = "[" + " ".join(names) + "]"
    if code == 0:
        ctl.warn(f"Successfully {done} units {listed}.")
    else:
        ctl.warn(f"Failed to {verb} units {listed}. exit == {code}.")
    return code


async def unload(ctl: Session) -> int:
    if not ctl.args.units:
        ctl.warn("No units given")
        return 0
    state, names = await _registered(ctl, ctl.args.units)
    unloading = []
    for name in names:
        job = state.jobs[name]
        if job.target_state == "inactive":
            continue
        await ctl.registry.set_target_state(name, "inactive")
        if is_global(job):
            ctl.say(f"Triggered global unit {name} unload")
        else:
            unloading.append(name)
    code = await wait_for(ctl, unloading, "unload", "inactive")
    return _outcome(ctl, code, unloading, "unload", "unloaded")


async def destroy(ctl: Session) -> int:
    if not ctl.args.units:
        ctl.warn("No units given")
        return 0
    for arg in ctl.args.units:
        name = normalize_name(Path(arg).name)
        if await ctl.registry.destroy(name):
            ctl.say(f"Destroyed {name}")
    return 0


async def restart(ctl: Session) -> int:
    if not ctl.args.units:
        ctl.warn("No units given")
        return 0
    _, names = await _registered(ctl, ctl.args.units)
    missing = [normalize_name(Path(a).name) for a in ctl.args.units]
    missing = [n for n in missing if n not in names]
    if missing:
        raise CtlError(f"Error restarting units: unable to find unit {missing[0]}")
    code = await set_and_wait(ctl, names, "loaded", "stop", "loaded", False)
    if code:
        return code
    return await set_and_wait(ctl, names, "launched", "start", "launched", False)


# -- one unit ---------------------------------------------------------------------
