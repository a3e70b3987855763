"""The refresh function: return a valid access token for one connection.

Invoked by other Lambdas with ``{"connection_id": "...", "min_ttl_seconds": 300, "force": false}``.
Returns ``{"ok": true, "access_token", "instance_url", "expires_at", "source", "version"}`` or
``{"ok": false, "error": {"kind", "type", "message", "retryable", ...}}``. Errors are returned,
not raised, so callers get the typed error and Lambda's own error count stays for real faults.

An event with an ``"action"`` field runs one of the operator's actions instead, for example
``{"action": "show", "connection_id": "org-1"}``, and returns ``{"ok": true, "action", "result"}``;
:data:`tokenkeeper.operations.ACTIONS` lists the actions and their fields. Action results never
contain a token.
"""

from __future__ import annotations

from aws_lambda_powertools.utilities.typing import LambdaContext

from tokenkeeper.config import Settings
from tokenkeeper.errors import InvalidEventError, TokenKeeperError
from tokenkeeper.observability import METRIC_REQUESTS, count, logger, metrics, tracer
from tokenkeeper.operations import Operations, parse_action_request, run_action, validate_connection_id
from tokenkeeper.refresher import MAX_MIN_TTL_SECONDS
from tokenkeeper.runtime import ContainerSlot, Runtime

DEFAULT_MIN_TTL_SECONDS = 300
# One data point per operator action event, so token request counts stay about token requests.
METRIC_ACTIONS = "OperatorActions"
EVENT_FIELDS = {"connection_id", "min_ttl_seconds", "force"}

_runtime: ContainerSlot[Runtime] = ContainerSlot(lambda: Runtime(Settings.from_environment()))
# Tests and the local world call these to read or replace the container's runtime.
get_runtime = _runtime.get
set_runtime = _runtime.set


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict, context: LambdaContext) -> dict:
    if isinstance(event, dict) and "action" in event:
        return _run_action(event)
    count(METRIC_REQUESTS)
    request = None
    try:
        request = parse_event(event)
        logger.append_keys(connection_id=request["connection_id"])
        token = get_runtime().refresher().get_token(
            request["connection_id"], min_ttl_seconds=request["min_ttl_seconds"], force=request["force"]
        )
    except TokenKeeperError as exc:
        if exc.connection_id is None and request is not None:
            # Errors raised while building the container's clients know no connection yet.
            exc.connection_id = request["connection_id"]
        logger.warning("Token request failed", extra={"error_kind": exc.kind, "reason": exc.message})
        return {"ok": False, "error": exc.to_payload()}
    logger.info("Token request served", extra={"source": token.source, "version": token.version})
    return {"ok": True, **token.to_payload()}


def _run_action(event: dict) -> dict:
    count(METRIC_ACTIONS)
    try:
        name, arguments = parse_action_request(event)
        logger.append_keys(action=name)
        result = run_action(Operations(get_runtime()), name, arguments)
    except TokenKeeperError as exc:
        logger.warning("Action failed", extra={"error_kind": exc.kind, "reason": exc.message})
        return {"ok": False, "error": exc.to_payload()}
    logger.info("Action finished")
    return {"ok": True, "action": name, "result": result}


def parse_event(event) -> dict:
    """Validate the invocation event and fill defaults; raise :class:`InvalidEventError` naming the field."""
    if not isinstance(event, dict):
        raise InvalidEventError(
            f"The event must be a JSON object like {{\"connection_id\": \"org-1\"}}, got {type(event).__name__}."
        )
    unknown = sorted(set(event) - EVENT_FIELDS)
    if unknown:
        raise InvalidEventError(
            f"The event has unknown fields {', '.join(map(repr, unknown))}; allowed are "
            f"{', '.join(sorted(EVENT_FIELDS))}."
        )
    connection_id = validate_connection_id(event.get("connection_id"))
    min_ttl = event.get("min_ttl_seconds", DEFAULT_MIN_TTL_SECONDS)
    if isinstance(min_ttl, bool) or not isinstance(min_ttl, int) or not 0 <= min_ttl <= MAX_MIN_TTL_SECONDS:
        raise InvalidEventError(
            f"min_ttl_seconds={min_ttl!r} is invalid; pass a whole number of seconds from 0 to {MAX_MIN_TTL_SECONDS}."
        )
    force = event.get("force", False)
    if not isinstance(force, bool):
        raise InvalidEventError(f"force={force!r} is invalid; pass true or false.")
    return {"connection_id": connection_id, "min_ttl_seconds": min_ttl, "force": force}
