"""The operator's command-line tool: ``python -m tokenkeeper.cli ACTION ...``.

It reads the same environment variables as the deployed functions (TOKENKEEPER_TABLE_NAME,
TOKENKEEPER_CLIENT_SECRET_ID, TOKENKEEPER_PROXY_SECRET_ID, TOKENKEEPER_TOKEN_KEY_ID and the
optional ones in :mod:`tokenkeeper.config`) and the usual AWS credentials, and runs the actions of
:mod:`tokenkeeper.operations`. Results go to standard output, as text or with ``--json`` as one
JSON document; progress and log lines go to standard error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime, timezone
from typing import Sequence

import boto3

from tokenkeeper.config import Settings
from tokenkeeper.errors import InvalidEventError, TokenKeeperError
from tokenkeeper.observability import logger
from tokenkeeper.operations import (
    DEFAULT_DUE_AFTER_DAYS,
    DEFAULT_ECHO_ATTEMPTS,
    DEFAULT_ECHO_URL,
    DEFAULT_LOGIN_HOST,
    Operations,
)
from tokenkeeper.runtime import AWS_CLIENT_CONFIG, Runtime

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_WARNING"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # argparse's own status for invalid arguments
EXIT_WARNING = 3
# Overrides the IP echo service's URL for check-egress; the local world points it at its emulator.
ENV_ECHO_URL = "TOKENKEEPER_EGRESS_ECHO_URL"

ENV_AWS_ENDPOINT_URL = "AWS_ENDPOINT_URL"

EPILOG = f"""\
environment:
  TOKENKEEPER_TABLE_NAME, TOKENKEEPER_CLIENT_SECRET_ID, TOKENKEEPER_PROXY_SECRET_ID and
  TOKENKEEPER_TOKEN_KEY_ID name the deployed table, secrets and KMS key (the stack's outputs).
  AWS credentials and region come from the usual AWS variables or profile.
  TOKENKEEPER_EGRESS_ECHO_URL replaces check-egress's default IP echo URL.

exit status:
  {EXIT_OK}  the action succeeded
  {EXIT_FAILED}  the action failed, or a bulk action failed for at least one connection
  {EXIT_USAGE}  the command line or one of its values is invalid
  {EXIT_WARNING}  check-egress saw only some of the expected addresses
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tokenkeeper.cli",
        description="Connect Salesforce orgs, check the proxy's egress IPs and administer stored connections.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON document")
    parser.add_argument(
        "--aws-endpoint-url",
        default=os.environ.get(ENV_AWS_ENDPOINT_URL) or None,
        metavar="URL",
        help=f"send DynamoDB, Secrets Manager and KMS requests to URL (default: ${ENV_AWS_ENDPOINT_URL}, else AWS)",
    )
    parser.add_argument("--quiet", action="store_true", help="print no progress lines")
    parser.add_argument("--verbose", action="store_true", help="print the product's log lines (JSON) to standard error")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    authorize = actions.add_parser(
        "authorize-url",
        help="start connecting an org: print the Salesforce URL its admin must open",
        description=(
            "Create a PKCE code verifier and a random state, store the verifier sealed with KMS for 15 minutes, "
            "and print the authorization URL. The admin of the subscriber org opens it and approves; Salesforce "
            "then redirects to the callback URL with code and state, which the connect action takes."
        ),
    )
    authorize.add_argument("connection_id", help="the id to store the new connection under, e.g. org-00D5g000004abcd")
    authorize.add_argument("--redirect-uri", required=True, help="the callback URL registered on the External Client App")
    authorize.add_argument(
        "--host",
        default=DEFAULT_LOGIN_HOST,
        help="login host: login.salesforce.com (production), test.salesforce.com (sandbox) or NAME.my.salesforce.com "
        "(default: %(default)s)",
    )
    authorize.add_argument("--scope", help="space-separated OAuth scopes (default: the app's configured scopes)")

    connect = actions.add_parser(
        "connect",
        help="finish connecting an org: exchange the code through the proxy and store the connection",
        description="Check the state, exchange the authorization code through the proxy, and store the first refresh token.",
    )
    connect.add_argument("--callback-url", help="the whole URL Salesforce redirected to (contains code and state)")
    connect.add_argument("--code", help="the code parameter of the redirect")
    connect.add_argument("--state", help="the state parameter of the redirect")

    egress = actions.add_parser(
        "check-egress",
        help="request an IP echo service through the proxy and compare the addresses with the static IPs",
        description=(
            "Send ATTEMPTS requests through the proxy to an IP echo service and count the source addresses it saw. "
            "Succeeds when every --expect address appeared and no other did; exits 3 when some expected address "
            "never appeared, and 1 when an unexpected address appeared or every request failed."
        ),
    )
    egress.add_argument("--expect", action="append", required=True, metavar="IP", help="a static IP of the proxy; give both")
    egress.add_argument("--url", default=os.environ.get(ENV_ECHO_URL) or DEFAULT_ECHO_URL, help="the IP echo URL, which returns {\"ip\": ...} (default: %(default)s)")
    egress.add_argument("--attempts", type=int, default=DEFAULT_ECHO_ATTEMPTS, help="number of requests (default: %(default)s)")

    listing = actions.add_parser("list", help="list connections with status, last redemption, idle days left and failures")
    listing.add_argument("--limit", type=_positive_int, help="print at most this many connections (1 or more)")

    show = actions.add_parser("show", help="show one connection's status and timestamps")
    show.add_argument("connection_id")

    refresh = actions.add_parser(
        "refresh",
        help="redeem a connection's refresh token now, or every connection that is due",
        description="Get an access token through the refresh protocol; the token itself is never printed.",
    )
    refresh_target = refresh.add_mutually_exclusive_group(required=True)
    refresh_target.add_argument("connection_id", nargs="?")
    refresh_target.add_argument("--all-due", action="store_true", help="refresh every active connection idle longer than --due-after-days")
    refresh.add_argument("--force", action="store_true", help="redeem even if the stored access token is still valid")
    refresh.add_argument(
        "--due-after-days",
        type=float,
        default=DEFAULT_DUE_AFTER_DAYS,
        help="with --all-due: days without a redemption after which a connection is due (default: %(default)g)",
    )

    disable = actions.add_parser("disable", help="stop serving and refreshing a connection (reversible with enable)")
    disable_target = disable.add_mutually_exclusive_group(required=True)
    disable_target.add_argument("connection_id", nargs="?")
    disable_target.add_argument("--all", action="store_true", help="disable every active connection")

    enable = actions.add_parser("enable", help="serve and refresh a disabled connection again")
    enable.add_argument("connection_id")

    revoke = actions.add_parser(
        "revoke",
        help="revoke the refresh token at Salesforce, mark the connection revoked and erase its tokens",
        description="Irreversible: the org must be connected again under a new id afterwards.",
    )
    revoke.add_argument("connection_id")
    revoke.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    _configure_logging(verbose=options.verbose)
    try:
        runtime = _build_runtime(options.aws_endpoint_url)
    except ValueError as exc:
        # boto3 rejects a malformed endpoint URL with a ValueError that names the value.
        parser.error(f"--aws-endpoint-url is invalid ({exc}); pass a URL such as http://127.0.0.1:5000.")
    except TokenKeeperError as exc:
        _print_error(exc, as_json=options.json)
        return EXIT_FAILED
    if options.action == "revoke" and not options.yes and not _confirm(options.connection_id):
        print("Not revoked.", file=sys.stderr)
        return EXIT_FAILED

    try:
        operations = Operations(runtime, progress=None if options.quiet else _print_progress)
        result = _run(operations, options)
    except InvalidEventError as exc:
        _print_error(exc, as_json=options.json)
        return EXIT_USAGE
    except TokenKeeperError as exc:
        _print_error(exc, as_json=options.json)
        return EXIT_FAILED

    _print_result(options.action, result, as_json=options.json)
    return _exit_status(result)


def _run(operations: Operations, options: argparse.Namespace) -> dict:
    action = options.action
    if action == "authorize-url":
        return operations.authorize_url(
            options.connection_id, redirect_uri=options.redirect_uri, host=options.host, scope=options.scope
        )
    if action == "connect":
        return operations.connect(code=options.code, state=options.state, callback_url=options.callback_url)
    if action == "check-egress":
        return operations.check_egress(expected=options.expect, url=options.url, attempts=options.attempts)
    if action == "list":
        return operations.list_connections(limit=options.limit)
    if action == "show":
        return operations.show(options.connection_id)
    if action == "refresh":
        if options.all_due:
            return operations.refresh_all_due(due_after_days=options.due_after_days)
        return operations.refresh(options.connection_id, force=options.force)
    if action == "disable":
        return operations.disable_all() if options.all else operations.disable(options.connection_id)
    if action == "enable":
        return operations.enable(options.connection_id)
    if action == "revoke":
        return operations.revoke(options.connection_id)
    raise InvalidEventError(f"Unknown action {action!r}.")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


def _build_runtime(endpoint_url: str | None) -> Runtime:
    settings = Settings.from_environment()
    session = boto3.session.Session()
    clients = {
        f"{name}_client": session.client(service, endpoint_url=endpoint_url, config=AWS_CLIENT_CONFIG)
        for name, service in (("dynamodb", "dynamodb"), ("secrets", "secretsmanager"), ("kms", "kms"))
    }
    return Runtime(settings, session=session, **clients)


def _configure_logging(*, verbose: bool) -> None:
    """Send the product's JSON log lines to standard error, so standard output holds only the result."""
    handler = logger.registered_handler
    if isinstance(handler, logging.StreamHandler):
        handler.setStream(sys.stderr)
    logger.setLevel(logging.INFO if verbose else logging.CRITICAL)
    if not verbose:
        # Powertools reads this at every flush. The CLI reports errors itself, on one line, and the
        # refresher logs nothing at CRITICAL except a token that could not be stored anywhere.
        os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"


def _confirm(connection_id: str) -> bool:
    if not sys.stdin.isatty():
        print("revoke is irreversible; pass --yes to confirm.", file=sys.stderr)
        return False
    answer = input(f"Revoke connection {connection_id!r} at Salesforce and erase its tokens? Type yes: ")
    return answer.strip().lower() == "yes"


def _print_progress(index: int, total: int, subject: str, outcome: str) -> None:
    print(f"[{index}/{total}] {subject}: {outcome}", file=sys.stderr, flush=True)


def _exit_status(result: dict) -> int:
    if result.get("status") == "warning":
        return EXIT_WARNING
    if result.get("status") == "failed" or result.get("failed"):
        return EXIT_FAILED
    return EXIT_OK


# Output --------------------------------------------------------------------------------------


def _print_error(exc: TokenKeeperError, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"ok": False, "error": exc.to_payload()}, indent=2))
    else:
        print(f"error ({exc.kind}): {exc.message}", file=sys.stderr)


def _print_result(action: str, result: dict, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"ok": True, "action": action, "result": result}, indent=2))
        return
    if action == "list":
        _print_table(result["connections"])
    elif action == "check-egress":
        for address, seen in result["addresses"].items():
            print(f"{address}  seen {seen} of {result['attempts']}")
        print(f"{result['status']}: {result['message']}")
    elif "results" in result:
        print(f"{result['action']}: {result['succeeded']} of {result['total']} succeeded, {result['failed']} failed")
        for entry in result["results"]:
            if not entry["ok"]:
                print(f"  {entry['connection_id']}: {entry['error']['message']}")
    else:
        for key, value in result.items():
            print(f"{key}: {_format_value(key, value)}")


def _print_table(connections: list[dict]) -> None:
    header = ("CONNECTION", "STATUS", "LAST REDEMPTION (UTC)", "IDLE DAYS LEFT", "FAILURES")
    rows = [
        (
            entry["connection_id"],
            entry["status"],
            _format_value("last_redeemed_at", entry["last_redeemed_at"]),
            "-" if entry["idle_days_left"] is None else f"{entry['idle_days_left']:.1f}",
            str(entry["consecutive_failures"]),
        )
        for entry in connections
    ]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"{len(rows)} connection(s)")


def _format_value(key: str, value) -> str:
    if value is None:
        return "-"
    if key.endswith("_at") and isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
