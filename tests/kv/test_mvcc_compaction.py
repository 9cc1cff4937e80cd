"""Compaction keeps exactly what a read at or after the compaction revision can see, and the
live-key index counts and pages as a walk of the key space would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from clustertui.backend.kv.mvcc import FROM_KEY, KeySpace, Writer

KEYS = [b"a", b"b", b"c", b"d"]
# One revision's operations: (key, value) puts, or (key, None) deletes.
revision_ops = st.lists(st.tuples(st.sampled_from(KEYS), st.none() | st.binary(max_size=3)))


def _apply(space: KeySpace, ops: list[tuple[bytes, bytes | None]]) -> None:
    writer = Writer(space)
    touched: set[bytes] = set()
    for key, value in ops:
        if key in touched:  # etcd refuses a key twice in one transaction
            continue
        touched.add(key)
        if value is None:
            writer.delete(key, b"")
        else:
            writer.put(key, value, 0)
    writer.finish()


def _view(space: KeySpace, revision: int) -> list[tuple[bytes, bytes, int, int, int]]:
    return [
        (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version)
        for kv in space.range(b"\0", FROM_KEY, revision)
    ]


@settings(max_examples=300, deadline=None)
@given(
    before=st.lists(revision_ops, max_size=12),
    after=st.lists(revision_ops, max_size=12),
    cuts=st.lists(st.integers(min_value=1, max_value=30), max_size=3),
)
def test_compaction_keeps_every_view_from_the_compaction_revision_on(
    before: list[list[tuple[bytes, bytes | None]]],
    after: list[list[tuple[bytes, bytes | None]]],
    cuts: list[int],
) -> None:
    space = KeySpace()
    for ops in before:
        _apply(space, ops)
    for cut in sorted(cuts):  # earlier compactions shrink the log the next one reads
        if cut <= space.revision:
            space.compact(cut)
    middle = space.revision
    for ops in after:
        _apply(space, ops)
    views = {rev: _view(space, rev) for rev in range(max(space.compacted, 1), space.revision + 1)}
    target = (max(space.compacted, 1) + space.revision) // 2
    space.compact(target)
    for rev, view in views.items():
        if rev >= target:
            assert _view(space, rev) == view, f"revision {rev} changed after compacting {target}"
    for key, history in space.index.items():
        kept = [r for r in history.revs if r <= target]
        # At most one version at or before the compaction revision stays, and never a deletion.
        assert len(kept) <= 1, (key, history.revs, middle)
        if kept:
            assert history.recs[0].version != 0
    newest = _view(space, space.revision)
    # The live-key index pages and counts as a walk would.
    assert space.count_live(b"\0", FROM_KEY) == len(newest)
    assert space.count_live(b"b", b"d") == len([v for v in newest if b"b" <= v[0] < b"d"])
    paged = space.first_live(b"\0", FROM_KEY, 2)
    assert [(kv.key, kv.value) for kv in paged] == [(v[0], v[1]) for v in newest[:2]]
    assert space.size == sum(
        len(key) + len(rec.value) + 48 for key, h in space.index.items() for rec in h.recs
    )
