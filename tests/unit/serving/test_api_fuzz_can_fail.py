"""The test of the test: the schemathesis suite fails on a scorer with a broken handler.

``tests/integration/test_api_fuzz.py`` passing means nothing unless it can fail. Its fuzz test
runs here in a child pytest, unchanged but for a smaller example count, with ``FUZZ_SCORER_URL``
pointing it at a server of ours instead of a real ``driftline serve``: the real
:class:`ScorerApi` app, served in-process on a local port with an in-memory online store and a
real model, but with one deliberate bug. Its online read crashes on an entity id that is not
ASCII, as an ASCII-only key encoder would (the same kind as a real bug fixed with these tests: a
lone surrogate in ``entity_id`` that redis-py cannot encode, a 500). The run must fail on exactly
the two operations that read the store, each with schemathesis' server-error finding and a
request reproducing it; the same run against the unbroken app passes, so the failure is the bug's.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiohttp import web

from driftline.core.online import MemoryOnlineStore, OnlineRow
from driftline.serving.api import ScorerApi

REPO = Path(__file__).resolve().parents[3]
FUZZ_MODULE = "tests/integration/test_api_fuzz.py"
FUZZ_TEST = "test_every_generated_request_gets_a_documented_answer"
FUZZ_EXAMPLES = 25  # of the suite's 300 per operation and mode: enough to hit the bug, quicker
# The apps run in this process. Schema-valid feature values beyond float32's range reach the
# model as +-inf (its input is float32), which numpy warns about; the score is still defined.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")


class AsciiKeysScorerApi(ScorerApi):
    """The real API with one bug: reading the online store crashes on a non-ASCII entity id."""

    async def _read(self, view: str, entity_id: str) -> OnlineRow:
        if isinstance(entity_id, str):
            entity_id.encode("ascii")  # UnicodeEncodeError, unhandled: a 500
        return await super()._read(view, entity_id)


@contextmanager
def serve(app: web.Application) -> Iterator[str]:
    """`app` on a free local port in a thread of its own; yields its base URL."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)

    async def start() -> str:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    url = loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, name="broken-scorer", daemon=True)
    thread.start()
    try:
        yield url
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def run_fuzz_suite(url: str) -> subprocess.CompletedProcess:
    """The integration suite's fuzz test, in a child pytest, against `url`. No short summary
    (`-rN`): with CI set, pytest would print each failure's whole text again there."""
    env = {**os.environ, "FUZZ_SCORER_URL": url, "FUZZ_MAX_EXAMPLES": str(FUZZ_EXAMPLES)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", f"{FUZZ_MODULE}::{FUZZ_TEST}", "-q", "-rN", "-p",
         "no:cacheprovider"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def store() -> MemoryOnlineStore:
    return MemoryOnlineStore()


def test_the_fuzz_suite_fails_on_a_handler_that_crashes(holder, store):
    """The run fails, naming the two operations that crash, each with a reproducing request."""
    with serve(AsciiKeysScorerApi(holder, store.reader(), lambda: {"status": "ok"}).app()) \
            as url:
        run = run_fuzz_suite(url)
    report = run.stdout + run.stderr
    assert run.returncode == 1, report
    # Exactly the two operations that read the online store fail; the others pass.
    failed = re.findall(rf"^_+ {FUZZ_TEST} \(label='([^']+)'\) _+$", run.stdout, re.M)
    assert sorted(failed) == ["GET /features/{entity_id}", "POST /predict"], report
    # Each with schemathesis' server-error finding, the 500 and a request reproducing it.
    assert report.count("- ST101 Server error") == 2, report
    assert report.count("[500] Internal Server Error") == 2, report
    assert """curl -X POST -H 'Content-Type: application/json' -d '{"entity_id": """ in report
    assert f"curl -X GET {url}/features/" in report, report


def test_the_fuzz_suite_passes_on_the_unbroken_app(holder, store):
    """The control: the same run against the real app passes, so the failure is the bug's."""
    with serve(ScorerApi(holder, store.reader(), lambda: {"status": "ok"}).app()) as url:
        run = run_fuzz_suite(url)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed, 6 subtests passed" in run.stdout, run.stdout
