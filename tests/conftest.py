"""Fixtures shared by the whole suite: the local world, and the scan of all output for secrets.

Every test's captured stdout and stderr (Powertools JSON logs and EMF metrics go there) and every
log record of every logger are checked for every secret the suite used: the client secret, the
proxy password in plain and percent-encoded form, and every token the Salesforce emulator issued.
Any hit fails the test that produced it. Each test report is scanned too, because pytest prints
exception texts and assertion operands of a failure: a secret found there is replaced by its
fingerprint and the test fails.
"""

from __future__ import annotations

import io
import logging
import os

import pytest

# jsii, which the infrastructure tests load, prints an end-of-life banner on Node.js 20.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import localworld  # noqa: F401  (puts the shared code on sys.path)
from localworld.leakcheck import assert_no_secrets, withhold_secrets
from localworld.world import LocalWorld
from tokenkeeper.observability import logger as product_logger


class _RecordCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(f"{record.getMessage()} {record.__dict__!r}")


@pytest.fixture(scope="session")
def world():
    with LocalWorld() as local_world:
        yield local_world


@pytest.fixture
def fresh_world(world):
    """The session's world with faults, counters, allowlist and proxy URL back to their defaults."""
    world.salesforce.clear_faults()
    world.salesforce.set_allowed_source_addresses(world.proxy.egress_addresses)
    world.salesforce.reset_stats()
    world.set_proxy_url(world.proxy.url())
    yield world
    world.salesforce.clear_faults()
    world.salesforce.set_allowed_source_addresses(world.proxy.egress_addresses)


@pytest.fixture(autouse=True)
def product_log(capfd):
    """Capture the product's formatted JSON log lines; after the test, scan all output for secrets.

    Powertools' handler keeps the stream it was created with, so the stream is swapped for a
    buffer here, then the lines are passed on to it for pytest's report.
    """
    handler = product_logger.registered_handler
    buffer = io.StringIO()
    previous_stream = handler.setStream(buffer)
    collector = _RecordCollector()
    watched = [logging.getLogger(), logging.getLogger("tokenkeeper")]
    for logger in watched:
        logger.addHandler(collector)
    yield buffer
    for logger in watched:
        logger.removeHandler(collector)
    handler.setStream(previous_stream)
    previous_stream.write(buffer.getvalue())
    out, err = capfd.readouterr()
    for text in [buffer.getvalue(), out, err, *collector.texts]:
        assert_no_secrets(text)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    withhold_secrets(outcome.get_result())
