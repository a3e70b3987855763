"""The command-line tool, run as an operator runs it: a subprocess with the environment set."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from localworld import REPOSITORY_ROOT, SHARED_CODE
from localworld.leakcheck import assert_no_secrets
from tests.operations.helpers import REDIRECT_URI, approve, assert_no_tokens
from tokenkeeper.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, EXIT_WARNING

TIMEOUT_SECONDS = 60


def run_cli(world, *arguments: str, environment: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(world.environment() if environment is None else environment)
    env["PYTHONPATH"] = str(SHARED_CODE)
    completed = subprocess.run(
        [sys.executable, "-m", "tokenkeeper.cli", *arguments],
        cwd=REPOSITORY_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
    )
    for text in (completed.stdout, completed.stderr):
        assert_no_secrets(text)
        assert_no_tokens(world, text)
    return completed


def test_cli_help_lists_actions(fresh_world):
    completed = run_cli(fresh_world, "--help", environment={})

    assert completed.returncode == EXIT_OK
    for action in ("authorize-url", "connect", "check-egress", "list", "show", "refresh", "disable", "enable", "revoke"):
        assert action in completed.stdout
    assert "exit status" in completed.stdout
    assert "--json" in completed.stdout


def test_cli_invalid_arguments_exit_usage(fresh_world):
    completed = run_cli(fresh_world, "refresh")

    assert completed.returncode == EXIT_USAGE
    assert "connection_id" in completed.stderr


def test_cli_missing_environment_names_variable(fresh_world):
    environment = {name: "" for name in fresh_world.environment() if name.startswith("TOKENKEEPER_")}

    completed = run_cli(fresh_world, "list", environment=environment)

    assert completed.returncode == EXIT_FAILED
    assert "TOKENKEEPER_TABLE_NAME" in completed.stderr


def test_cli_list_json(fresh_world, new_id):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)

    completed = run_cli(fresh_world, "--json", "list")

    assert completed.returncode == EXIT_OK
    document = json.loads(completed.stdout)
    assert document["ok"] is True
    assert document["action"] == "list"
    entries = {entry["connection_id"]: entry for entry in document["result"]["connections"]}
    assert entries[connection_id]["status"] == "active"


def test_cli_show_text(fresh_world, new_id):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)

    completed = run_cli(fresh_world, "show", connection_id)

    assert completed.returncode == EXIT_OK
    assert f"connection_id: {connection_id}" in completed.stdout
    assert "status: active" in completed.stdout
    assert "idle_days_left: " in completed.stdout


def test_cli_aws_endpoint_option(fresh_world, new_id):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)
    environment = fresh_world.environment()
    endpoint = environment.pop("AWS_ENDPOINT_URL")
    environment["AWS_ENDPOINT_URL"] = ""

    completed = run_cli(fresh_world, "--aws-endpoint-url", endpoint, "--json", "show", connection_id, environment=environment)

    assert completed.returncode == EXIT_OK
    assert json.loads(completed.stdout)["result"]["connection_id"] == connection_id


def test_cli_show_unknown_json_error(fresh_world):
    completed = run_cli(fresh_world, "--json", "show", "org-not-there")

    assert completed.returncode == EXIT_FAILED
    document = json.loads(completed.stdout)
    assert document["ok"] is False
    assert document["error"]["kind"] == "connection_not_found"


@pytest.mark.parametrize(
    ("expected", "attempts", "status"),
    [
        (["127.0.0.2", "127.0.0.3"], "4", EXIT_OK),
        (["127.0.0.2", "127.0.0.3"], "1", EXIT_WARNING),
        (["127.0.0.2", "127.0.0.9"], "4", EXIT_FAILED),
    ],
)
def test_cli_check_egress_exit_status(fresh_world, expected, attempts, status):
    url = f"{fresh_world.salesforce.base_url}/ip"
    options = [part for address in expected for part in ("--expect", address)]

    completed = run_cli(fresh_world, "--json", "check-egress", *options, "--url", url, "--attempts", attempts)

    assert completed.returncode == status
    assert json.loads(completed.stdout)["result"]["attempts"] == int(attempts)
    assert completed.stderr.count("/ip: ") == int(attempts)


def test_cli_connect_end_to_end(fresh_world, new_id):
    connection_id = new_id()

    started = run_cli(
        fresh_world, "--json", "authorize-url", connection_id, "--redirect-uri", REDIRECT_URI, "--host", fresh_world.token_host
    )
    url = json.loads(started.stdout)["result"]["url"]
    code, state = approve(fresh_world, url)
    connected = run_cli(fresh_world, "--json", "connect", "--callback-url", f"{REDIRECT_URI}?code={code}&state={state}")

    assert started.returncode == EXIT_OK
    assert connected.returncode == EXIT_OK
    result = json.loads(connected.stdout)["result"]
    assert result["connection_id"] == connection_id
    assert result["status"] == "active"


def test_cli_revoke_needs_confirmation(fresh_world, new_id):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)

    unconfirmed = run_cli(fresh_world, "revoke", connection_id)
    revoked = run_cli(fresh_world, "--json", "revoke", connection_id, "--yes")

    assert unconfirmed.returncode == EXIT_FAILED
    assert "--yes" in unconfirmed.stderr
    assert revoked.returncode == EXIT_OK
    assert json.loads(revoked.stdout)["result"]["status"] == "revoked"


def test_package_main_runs_cli(fresh_world):
    completed = subprocess.run(
        [sys.executable, "-m", "tokenkeeper", "--help"],
        cwd=REPOSITORY_ROOT,
        env={**os.environ, "PYTHONPATH": str(SHARED_CODE)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
    )

    assert completed.returncode == EXIT_OK
    assert "check-egress" in completed.stdout


def test_cli_invalid_endpoint_is_usage_error(fresh_world):
    completed = run_cli(fresh_world, "--aws-endpoint-url", "not-a-url", "list")

    assert completed.returncode == EXIT_USAGE
    assert "--aws-endpoint-url" in completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize(
    "arguments",
    [
        ("list", "--limit", "0"),
        ("check-egress", "--expect", "not-an-ip", "--expect", "127.0.0.2"),
        ("show", "org with spaces"),
    ],
)
def test_cli_invalid_value_is_usage_error(fresh_world, arguments):
    completed = run_cli(fresh_world, *arguments)

    assert completed.returncode == EXIT_USAGE
    assert "Traceback" not in completed.stderr


def test_cli_failure_prints_one_line_without_logs(fresh_world, new_id):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)
    fresh_world.set_proxy_url(fresh_world.proxy.url(password="wrong-password-value"))

    completed = run_cli(fresh_world, "refresh", connection_id, "--force")

    assert completed.returncode == EXIT_FAILED
    assert "407" in completed.stderr
    assert '{"level"' not in completed.stderr
    assert '"_aws"' not in completed.stderr + completed.stdout


def test_cli_check_egress_uses_configured_echo_url(fresh_world):
    completed = run_cli(fresh_world, "--json", "check-egress", "--expect", "127.0.0.2", "--expect", "127.0.0.3")

    assert completed.returncode == EXIT_OK
    result = json.loads(completed.stdout)["result"]
    assert result["status"] == "ok"
