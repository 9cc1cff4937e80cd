"""Provides clusterctl's commands on one unit or machine: cat, status, journal, ssh."""

from __future__ import annotations

import sys
from pathlib import Path

from clustertui.backend.fleet.model import UnsafeValue, is_global, status_block
from clustertui.backend.fleet.unitfile import normalize_name
from clustertui.backend.text import literal
from clustertui.console.access import check_unit_name, run
from clustertui.console.ctl.session import CtlError, Session


async def cat(ctl: Session) -> int:
    name = normalize_name(ctl.args.unit)
    job = await ctl.registry.job(name)
    if job is None or job.unit is None:
        raise CtlError(f"Unit {name} not found")
    ctl.out.write(literal(job.unit.raw, lines=True))
    if not job.unit.raw.endswith("\n"):
        ctl.out.write("\n")
    return 0


async def status(ctl: Session) -> int:
    code = 0
    for arg in ctl.args.units:
        name = normalize_name(Path(arg).name)
        check_unit_name(name)
        state = await ctl.registry.snapshot(("job", "unit", "machines", "states"))
        job = state.jobs.get(name)
        if job is None:
            ctl.warn(f"Unit {name} does not exist.")
            code = 1
            continue
        for line in status_block(job, state):
            ctl.say(line)
        reported = state.states.get(name, {}).get(job.target) if job.target else None
        if (reported is None or reported.active_state != "active") and code == 0:
            # systemctl status (which fleetctl status runs) exits 3 for a unit not active.
            code = 3
        machine = state.machines.get(job.target) if job.target else None
        if machine is not None:
            try:
                lines = ctl.journal_command(machine, name, lines=ctl.args.lines, follow=False)
            except UnsafeValue as error:
                # The state is shown; the machine is not dialled.
                ctl.warn(f"Not reading the journal: {error}")
                code = code or 1
                continue
            _, text = await ctl.run_on(machine, lines, capture=True)
            if text.strip():
                ctl.say("")
                ctl.out.write(literal(text, lines=True))
                ctl.out.flush()
    return code


async def journal(ctl: Session) -> int:
    name = normalize_name(ctl.args.unit)
    check_unit_name(name)
    state = await ctl.registry.snapshot(("job", "unit", "machines", "states"))
    job = state.jobs.get(name)
    if job is None:
        raise CtlError(f"Unit {name} does not exist.")
    target = job.target
    if is_global(job):
        # A global unit runs everywhere: this host's copy if it has one, else the first.
        hosts = sorted(m for m in state.states.get(name, {}) if m in state.machines)
        local = [m for m in hosts if ctl.is_local(state.machines[m])]
        target = (local or hosts or [""])[0]
    if not target:
        raise CtlError(f"Unit {name} does not appear to be running.")
    machine = state.machines.get(target)
    if machine is None:
        raise CtlError(f"Machine {target} of unit {name} is not in the cluster.")
    command = ctl.journal_command(
        machine, name, lines=ctl.args.lines, follow=ctl.args.follow, output=ctl.args.output
    )
    code, _ = await ctl.run_on(machine, command, capture=False)
    return code


async def ssh(ctl: Session) -> int:
    target = ctl.args.target
    machines = await ctl.machines()
    machine = machines.get(target)
    if machine is None:
        matches = [m for i, m in machines.items() if i.startswith(target)]
        if len(matches) > 1:
            raise CtlError(f"Found more than one machine matching {target!r}")
        machine = matches[0] if matches else None
    if machine is None:
        job = await ctl.registry.job(normalize_name(target))
        if job is not None and job.target:
            machine = machines.get(job.target)
        if machine is None:
            raise CtlError(f"Could not find machine or unit {target!r}")
    # Like ssh itself, the words of the command go to the remote shell as one line.
    remote = " ".join(ctl.args.remote)
    argv = ctl.ssh_route().argv(machine, remote, tty=not remote and sys.stdin.isatty())
    code, _ = await run(argv, env=None, out=ctl.out, stdin=True)
    return code
