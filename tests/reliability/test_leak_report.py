"""The scan of pytest's own reports: a secret in a failure report is replaced and fails the test."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from localworld.leakcheck import redact, register_secret, withhold_secrets


@dataclass
class FakeReport:
    """The attributes of pytest's TestReport that the scan reads and writes."""

    longreprtext: str = ""
    sections: list = field(default_factory=list)
    longrepr: object = None
    outcome: str = "passed"


def test_report_with_secret_is_redacted_and_failed():
    secret = "rt-" + secrets.token_hex(12)
    register_secret(secret)
    report = FakeReport(
        longreprtext=f"StoreError: could not write {secret}",
        sections=[("Captured stdout call", f"token={secret}\n")],
        outcome="failed",
    )

    found = withhold_secrets(report)

    assert found is True
    assert report.outcome == "failed"
    assert secret not in str(report.longrepr)
    assert "appeared in this test's report" in str(report.longrepr)
    assert secret not in report.sections[0][1]
    assert "[secret sha256:" in report.sections[0][1]


def test_passing_report_with_secret_in_output_fails():
    secret = "at-" + secrets.token_hex(12)
    register_secret(secret)
    report = FakeReport(sections=[("Captured stderr call", f"debug {secret}")])

    assert withhold_secrets(report) is True
    assert report.outcome == "failed"


def test_clean_report_is_left_alone():
    report = FakeReport(longreprtext="AssertionError: 1 != 2", sections=[("Captured stdout call", "ok\n")])

    assert withhold_secrets(report) is False
    assert report.outcome == "passed"
    assert report.longrepr is None


def test_redact_replaces_longer_secret_whole():
    inner = "in-" + secrets.token_hex(8)
    outer = inner + "-outer-" + secrets.token_hex(4)
    register_secret(inner)
    register_secret(outer)

    redacted = redact(f"a {outer} b {inner}")

    assert inner not in redacted
    assert redacted.count("[secret sha256:") == 2
