"""External HTTP/2 conformance: h2spec against the bundled store and real etcd 3.4.

h2spec (summerwind/h2spec 2.0.0, prebuilt in ``../shared/tools/``) speaks h2c with prior
knowledge to each store. Every case that passes on etcd must pass on ours; case 5.1.2 (more
streams than the advertised limit) runs against ours only, since etcd advertises no limit
and h2spec then loops for ever. The sections run in parallel (most of etcd's time is h2spec
waiting out its timeout on cases etcd fails), so the whole test takes about 20 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.harness.bundled import start_bundled
from tests.harness.etcd import start_etcd
from tests.harness.procs import REPO
from tests.harness.stores import RunningStore

SECTIONS = [
    "generic/1", "generic/2", "generic/3.1", "generic/3.2", "generic/3.3", "generic/3.4",
    "generic/3.5", "generic/3.7", "generic/3.8", "generic/3.9", "generic/3.10", "generic/4",
    *(f"generic/5/{i}" for i in range(1, 16)),
    "hpack",
    "http2/3", "http2/4",
    *(f"http2/5.1/{i}" for i in range(1, 14)),
    "http2/5.1.1", "http2/5.3", "http2/5.4", "http2/5.5",
    "http2/6.1", "http2/6.2", "http2/6.3", "http2/6.4", "http2/6.5", "http2/6.7", "http2/6.8",
    "http2/6.9", "http2/6.10", "http2/7", "http2/8",
]  # fmt: skip
"""Every case but 5.1.2, in pieces small enough to run side by side."""
STREAM_LIMIT = "http2/5.1.2"


def find_h2spec() -> str:
    found = shutil.which("h2spec")
    if found:
        return found
    candidate = REPO.parent / "shared" / "tools" / "h2spec"
    if candidate.exists():
        return str(candidate)
    if os.environ.get("CI") == "true":
        pytest.fail("h2spec is missing: CI must provide it on PATH or in ../shared/tools/")
    pytest.skip("h2spec not found on PATH or in ../shared/tools/")


def run_h2spec(
    h2spec: str, url: str, sections: list[str], out: Path, timeout: int = 2
) -> dict[str, dict[str, bool]]:
    """Runs each section as its own h2spec process, 8 at a time: {section: {case: passed}}."""
    port = url.rsplit(":", 1)[1]

    def one(index: int, section: str) -> dict[str, bool]:
        report = out / f"{index}.xml"
        subprocess.run(
            [h2spec, "-h", "127.0.0.1", "-p", port, "-P", "/etcdserverpb.KV/Range",
             "--timeout", str(timeout), "-j", str(report), section],
            capture_output=True,
            timeout=120,
            check=False,
        )  # fmt: skip
        assert report.exists(), f"h2spec wrote no report for {section}"
        results = {}
        for suite in ET.parse(report).iter("testsuite"):
            for case in suite.iter("testcase"):
                failed = any(case.find(tag) is not None for tag in ("failure", "error", "skipped"))
                results[f"{suite.get('package')}: {case.get('classname')}"] = not failed
        return results

    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(8) as pool:
        return dict(zip(sections, pool.map(one, range(len(sections)), sections), strict=True))


def flat(by_section: dict[str, dict[str, bool]]) -> dict[str, bool]:
    return {case: ok for cases in by_section.values() for case, ok in cases.items()}


@pytest.fixture
def both(tmp_path: Path) -> Iterator[tuple[RunningStore, RunningStore]]:
    ours = start_bundled(tmp_path / "bundled")
    etcd = start_etcd(tmp_path / "etcd")
    yield ours, etcd
    ours.stop()
    etcd.stop()


@pytest.mark.slow
def test_every_h2spec_case_etcd_passes_passes_on_ours_and_so_does_the_stream_limit(
    both: tuple[RunningStore, RunningStore], tmp_path: Path
) -> None:
    h2spec = find_h2spec()
    ours, etcd = both
    with ThreadPoolExecutor(2) as pool:
        on_etcd = pool.submit(run_h2spec, h2spec, etcd.url, SECTIONS, tmp_path / "etcd")
        on_ours = pool.submit(
            run_h2spec, h2spec, ours.url, [*SECTIONS, STREAM_LIMIT], tmp_path / "ours"
        )
        etcd_results, by_section = flat(on_etcd.result()), on_ours.result()
    assert len(etcd_results) >= 140, "h2spec ran fewer cases than it has"
    assert sum(etcd_results.values()) >= 80, "etcd passes 82 cases: is it running?"

    def missing_cases(results: dict[str, bool]) -> list[str]:
        return sorted(case for case, ok in etcd_results.items() if ok and not results.get(case))

    # A case that fails on ours is run again alone, with a longer wait, up to three times:
    # h2spec's wait for an answer is 2 s on a busy machine, and in 6.9/2-3 its WINDOW_UPDATE
    # races the store's answer (a stream already answered and reset with NO_ERROR cannot
    # then be reset with the error h2spec expects; see the closing note of this change).
    # A case that fails every time fails the test.
    our_results = flat(by_section)
    for attempt in range(3):
        failed = set(missing_cases(our_results))
        again = [section for section, cases in by_section.items() if failed & set(cases)]
        if not all(our_results.get(case, False) for case in by_section[STREAM_LIMIT]):
            again.append(STREAM_LIMIT)
        if not again:
            break
        for number, section in enumerate(again):
            where = tmp_path / f"again{attempt}-{number}"
            rerun = flat(run_h2spec(h2spec, ours.url, [section], where, timeout=10))
            our_results.update({case: ok for case, ok in rerun.items() if ok})
    missing = missing_cases(our_results)
    assert not missing, "passes on etcd, not on ours:\n" + "\n".join(missing)
    limit = [case for case in our_results if case.startswith(STREAM_LIMIT)]
    assert limit and all(our_results[case] for case in limit), "5.1.2 (stream limit) fails"
