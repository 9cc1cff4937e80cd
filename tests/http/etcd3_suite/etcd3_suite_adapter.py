"""A pytest plugin for running python-etcd3 0.12.0's own test suite against one store.

Loaded with ``-p etcd3_suite_adapter`` by tests/http/test_etcd3_suite.py (this folder on
PYTHONPATH; not a test module of ours). It changes nothing the suite checks, only where and
how long it runs:

* The suite points most of its tests at ``PYTHON_ETCD_HTTP_URL``, but ``TestAlarms`` and
  ``TestClient`` call ``etcd3.client()`` with its defaults (localhost:2379, which CI cannot
  own). Here those defaults come from the same variable. (Its ``etcdctl`` calls without
  ``--endpoints`` only run in a test that fails first on its own ``mock.patch('etcdrpc...')``.)
* Hypothesis: the suite's ``@given`` tests take a function-scoped fixture, which today's
  Hypothesis refuses by health checks the suite predates (it was written for 2019's); those
  two checks (function-scoped fixture, differing executors) are suppressed. Examples per
  test are capped (20, or ``ETCD3_SUITE_EXAMPLES``) to bound the run, and no example
  database is written into the suite's folder.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, settings


def pytest_configure(config: pytest.Config) -> None:
    import etcd3  # its package exports the ``client`` function, shadowing the module

    url = os.environ.get("PYTHON_ETCD_HTTP_URL")
    if url:
        parts = urlsplit(url)
        defaults = list(etcd3.client.__defaults__ or ())
        defaults[0:2] = [parts.hostname, parts.port]
        etcd3.client.__defaults__ = tuple(defaults)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A @given test keeps the settings in force when it was decorated (the suite's own
    # "default" profile); Hypothesis's pytest plugin reads them from this attribute.
    examples = int(os.environ.get("ETCD3_SUITE_EXAMPLES", "20"))
    for item in items:
        test = getattr(item, "obj", None)
        function = getattr(test, "__func__", test)
        current = getattr(function, "_hypothesis_internal_use_settings", None)
        if current is None:
            continue
        function._hypothesis_internal_use_settings = settings(  # type: ignore[union-attr]
            current,
            suppress_health_check=[
                HealthCheck.function_scoped_fixture,
                HealthCheck.differing_executors,
            ],
            max_examples=min(examples, current.max_examples),
            database=None,
        )
