"""Tests for the placement rules: every [X-Fleet] option, combinations, and unplaceable units."""

from __future__ import annotations

import fnmatch

from hypothesis import given, settings
from hypothesis import strategies as st

from clustertui.backend.fleet.engine import Decision, schedule
from clustertui.backend.fleet.registry import ClusterState, Job, Machine
from clustertui.backend.fleet.unitfile import parse

A = "aaaaaaaa11111111aaaaaaaa11111111"
B = "bbbbbbbb22222222bbbbbbbb22222222"
C = "cccccccc33333333cccccccc33333333"


def cluster(*machines: Machine) -> ClusterState:
    state = ClusterState()
    state.machines = {m.id: m for m in machines}
    return state


def three() -> ClusterState:
    return cluster(
        Machine(A, "10.0.0.1", {"region": "us-east", "disk": "ssd"}),
        Machine(B, "10.0.0.2", {"region": "us-west", "disk": "ssd"}),
        Machine(C, "10.0.0.3", {"region": "us-west", "disk": "hdd"}),
    )


def add(
    state: ClusterState, name: str, fleet: str = "", *, target: str = "", want: str = "launched"
) -> None:
    raw = f"[Service]\nExecStart=/bin/true\n[X-Fleet]\n{fleet}"
    state.jobs[name] = Job(name, "h", want, target, unit=parse(raw, name))


def targets(decisions: dict[str, Decision]) -> dict[str, str]:
    return {name: d.target for name, d in decisions.items()}


def test_units_go_to_the_least_loaded_machine_ties_broken_by_id() -> None:
    state = three()
    for index in range(6):
        add(state, f"u{index}.service")
    placed = targets(schedule(state))
    assert placed == {
        "u0.service": A,
        "u1.service": B,
        "u2.service": C,
        "u3.service": A,
        "u4.service": B,
        "u5.service": C,
    }


def test_existing_placements_stay_and_new_units_fill_the_gaps() -> None:
    state = three()
    add(state, "a.service", target=C)
    add(state, "b.service", target=C)
    add(state, "c.service")
    add(state, "d.service")
    placed = targets(schedule(state))
    assert placed["a.service"] == C and placed["b.service"] == C
    assert {placed["c.service"], placed["d.service"]} == {A, B}


def test_inactive_units_are_not_placed() -> None:
    state = three()
    add(state, "idle.service", want="inactive", target=A)
    assert schedule(state)["idle.service"] == Decision()


def test_machine_id_takes_the_full_id_or_a_unique_prefix() -> None:
    state = three()
    add(state, "full.service", f"MachineID={B}")
    add(state, "prefix.service", "MachineID=cccccccc")
    placed = targets(schedule(state))
    assert placed == {"full.service": B, "prefix.service": C}


def test_a_machine_id_that_matches_nothing_says_so() -> None:
    state = three()
    add(state, "x.service", "MachineID=dddddddd")
    assert schedule(state)["x.service"].reason == "no machine matches MachineID=dddddddd"


def test_an_ambiguous_machine_id_prefix_is_refused() -> None:
    state = cluster(Machine("abcdefgh1"), Machine("abcdefgh2"))
    add(state, "x.service", "MachineID=abcdefgh")
    decision = schedule(state)["x.service"]
    assert decision.target == ""
    assert "matches 2 machines" in decision.reason


def test_metadata_on_one_line_must_all_match() -> None:
    state = three()
    add(state, "x.service", "MachineMetadata=region=us-west disk=ssd")
    assert schedule(state)["x.service"].target == B


def test_repeated_metadata_keys_are_alternatives() -> None:
    state = three()
    for index in range(4):
        add(state, f"x{index}.service", "MachineMetadata=disk=hdd\nMachineMetadata=disk=ssd")
    assert set(targets(schedule(state)).values()) == {A, B, C}
    state = three()
    add(
        state,
        "y.service",
        "MachineMetadata=region=us-east\nMachineMetadata=region=us-west\nMachineMetadata=disk=hdd",
    )
    assert schedule(state)["y.service"].target == C


def test_unmatched_metadata_says_which() -> None:
    state = three()
    add(state, "x.service", "MachineMetadata=region=eu-central")
    assert schedule(state)["x.service"] == Decision(
        reason="no machine has the metadata region=eu-central"
    )


def test_conflicting_units_never_share_a_machine() -> None:
    state = three()
    for index in range(3):
        add(state, f"web@{index}.service", "Conflicts=web@*.service")
    placed = targets(schedule(state))
    assert sorted(placed.values()) == sorted([A, B, C])


def test_conflicts_apply_in_both_directions() -> None:
    state = cluster(Machine(A), Machine(B))
    add(state, "db.service", target=A)
    add(state, "cache.service", "Conflicts=db.service")
    add(state, "other.service", target=B)
    assert schedule(state)["cache.service"].target == B
    state = cluster(Machine(A), Machine(B))
    add(state, "cache.service", "Conflicts=db*", target=A)
    add(state, "db.service")
    add(state, "filler.service", target=B)
    assert schedule(state)["db.service"].target == B


def test_a_fourth_conflicting_unit_on_three_machines_stays_unplaced_with_a_reason() -> None:
    state = three()
    for index in range(4):
        add(state, f"web@{index}.service", "Conflicts=web@*.service")
    decisions = schedule(state)
    assert sum(1 for d in decisions.values() if d.target) == 3
    loser = decisions["web@3.service"]
    assert loser.target == ""
    assert "conflicting unit" in loser.reason


def test_machine_of_followers_go_with_their_target() -> None:
    state = three()
    add(state, "filler.service", target=A)
    add(state, "db.service")
    add(state, "backup.service", "MachineOf=db.service")
    placed = targets(schedule(state))
    assert placed["db.service"] == B
    assert placed["backup.service"] == B


def test_a_follower_of_an_unplaced_unit_waits_and_says_why() -> None:
    state = three()
    add(state, "db.service", "MachineMetadata=region=mars")
    add(state, "backup.service", "MachineOf=db.service")
    decision = schedule(state)["backup.service"]
    assert decision.target == ""
    assert "db.service is not scheduled" in decision.reason


def test_machine_of_cycles_are_refused() -> None:
    state = three()
    add(state, "a.service", "MachineOf=b.service")
    add(state, "b.service", "MachineOf=a.service")
    assert "cycle" in schedule(state)["a.service"].reason


def test_replaces_takes_the_machine_and_moves_the_replaced_unit_away() -> None:
    state = three()
    add(state, "old.service", target=A)
    add(state, "new.service", "Replaces=old.service")
    placed = targets(schedule(state))
    assert placed["new.service"] == A
    assert placed["old.service"] in (B, C)


def test_global_units_are_left_to_the_agents() -> None:
    state = three()
    add(state, "monitor.service", "Global=true")
    assert schedule(state)["monitor.service"] == Decision()


def test_units_on_a_vanished_machine_are_placed_elsewhere() -> None:
    state = cluster(Machine(A), Machine(B))
    add(state, "a.service", target=C)
    add(state, "b.service", target=A)
    placed = targets(schedule(state))
    assert placed == {"a.service": B, "b.service": A}


def test_no_machines_means_no_placement_with_a_reason() -> None:
    state = cluster()
    add(state, "x.service")
    assert schedule(state)["x.service"].reason == "no machines are in the cluster"


def test_metadata_and_conflicts_together() -> None:
    state = three()
    add(state, "w1.service", "MachineMetadata=region=us-west\nConflicts=w*.service")
    add(state, "w2.service", "MachineMetadata=region=us-west\nConflicts=w*.service")
    add(state, "w3.service", "MachineMetadata=region=us-west\nConflicts=w*.service")
    decisions = schedule(state)
    assert {decisions["w1.service"].target, decisions["w2.service"].target} == {B, C}
    assert decisions["w3.service"].target == ""


def test_a_placed_unit_whose_constraint_no_longer_holds_moves() -> None:
    state = three()
    add(state, "x.service", "MachineMetadata=disk=hdd", target=A)
    assert schedule(state)["x.service"].target == C


_OPTIONS = st.sampled_from(
    [
        "",
        "MachineMetadata=region=us-west",
        "MachineMetadata=disk=ssd\nMachineMetadata=disk=hdd",
        "Conflicts=web@*.service",
        "Conflicts=db.service",
        "MachineOf=db.service",
        "MachineID=bbbbbbbb",
        "Replaces=u1.service",
    ]
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["db", "web@1", "web@2", "web@3", "u1", "u2", "u3", "u4"]),
            _OPTIONS,
            st.sampled_from(["", A, B, C, "gone"]),
        ),
        max_size=8,
        unique_by=lambda t: t[0],
    ),
    st.sets(st.sampled_from([A, B, C]), min_size=1),
)
def test_placements_always_honour_the_constraints(
    units: list[tuple[str, str, str]], alive: set[str]
) -> None:
    state = three()
    state.machines = {m: state.machines[m] for m in alive}
    for stem, fleet, target in units:
        add(state, f"{stem}.service", fleet, target=target)
    decisions = schedule(state)
    on: dict[str, list[str]] = {}
    for name, decision in decisions.items():
        assert decision.target or decision.reason
        if not decision.target:
            continue
        assert decision.target in state.machines
        on.setdefault(decision.target, []).append(name)
        options = state.jobs[name].unit.fleet(name)  # type: ignore[union-attr]
        machine = state.machines[decision.target]
        for key, values in options.metadata.items():
            assert machine.metadata.get(key) in values
        if options.machine_id:
            assert decision.target.startswith(options.machine_id)
        for leader in options.machine_of:
            assert decisions[leader].target == decision.target
    for names in on.values():
        for name in names:
            options = state.jobs[name].unit.fleet(name)  # type: ignore[union-attr]
            for other in names:
                if other != name:
                    assert not any(fnmatch.fnmatchcase(other, p) for p in options.conflicts)


def test_conflicts_with_a_global_unit_apply_where_it_runs() -> None:
    state = three()
    add(state, "monitor.service", "Global=true\nMachineMetadata=region=us-west")
    add(state, "loner.service", "Conflicts=monitor.service")
    add(state, "picky.service", "MachineMetadata=region=us-west\nConflicts=monitor*")
    decisions = schedule(state)
    assert decisions["loner.service"].target == A
    assert decisions["picky.service"].target == ""
    assert "conflicting unit" in decisions["picky.service"].reason


def test_a_global_units_own_conflicts_keep_matching_units_away() -> None:
    state = three()
    add(state, "guard.service", "Global=true\nMachineID=aaaaaaaa\nConflicts=batch-*")
    add(state, "batch-1.service", "MachineMetadata=disk=ssd")
    assert schedule(state)["batch-1.service"].target == B
