"""The authorization callback: finish connecting an org when Salesforce redirects the browser here.

Served by a Lambda function URL that is registered as the External Client App's callback URL.
Salesforce redirects the subscriber admin's browser to ``GET <url>?code=...&state=...`` after
consent. The handler runs the same steps as ``python -m tokenkeeper.cli connect``: it checks the
state against a pending authorization, exchanges the code through the proxy, and stores the new
connection. The page it returns names the connection and never contains a token or the code.

The URL is public, so the state is what protects it: a request without the state of a pending
authorization changes nothing.
"""

from __future__ import annotations

import html

from aws_lambda_powertools.utilities.typing import LambdaContext

from tokenkeeper.config import Settings
from tokenkeeper.errors import AuthorizationStateError, InvalidEventError, SalesforceOAuthError, TokenKeeperError
from tokenkeeper.observability import count, logger, metrics, tracer
from tokenkeeper.operations import Operations
from tokenkeeper.runtime import ContainerSlot, Runtime

METRIC_CALLBACKS = "AuthorizationCallbacks"
# The code is in the page's own URL, so no Referer may carry it on, and nothing may be cached.
RESPONSE_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'",
}
MAX_PARAMETER_LENGTH = 4096

_runtime: ContainerSlot[Runtime] = ContainerSlot(lambda: Runtime(Settings.from_environment()))
# Tests and the local world call these to read or replace the container's runtime.
get_runtime = _runtime.get
set_runtime = _runtime.set


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict, context: LambdaContext) -> dict:
    count(METRIC_CALLBACKS)
    method = (event.get("requestContext") or {}).get("http", {}).get("method", "")
    if method != "GET":
        return _page(405, "Method not allowed", "This address only accepts the redirect from Salesforce.")

    try:
        code, state = _code_and_state(event.get("queryStringParameters") or {})
        result = Operations(get_runtime()).connect(code=code, state=state)
    except (AuthorizationStateError, InvalidEventError) as exc:
        logger.warning("Authorization callback rejected", extra={"error_kind": exc.kind, "reason": exc.message})
        return _page(400, "Connection failed", exc.message)
    except TokenKeeperError as exc:
        logger.warning(
            "Authorization callback failed",
            extra={"error_kind": exc.kind, "reason": exc.message, "connection_id": exc.connection_id},
        )
        return _page(502 if exc.retryable else 400, "Connection failed", exc.message)

    logger.info("Authorization callback connected an org", extra={"connection_id": result["connection_id"]})
    return _page(200, "Connected", f"Connection {result['connection_id']} is active. You can close this window.")


def _code_and_state(parameters: dict) -> tuple[str, str]:
    """Return the redirect's code and state, or raise the error Salesforce redirected with."""
    for name, value in parameters.items():
        if not isinstance(value, str) or len(value) > MAX_PARAMETER_LENGTH:
            raise InvalidEventError(f"The query parameter {name!r} is invalid.")
    if "error" in parameters:
        description = parameters.get("error_description", "")
        raise SalesforceOAuthError(
            f"Salesforce returned the error {parameters['error']} ({description}) instead of a code; the "
            "administrator may have denied access. Ask the ISV for a new authorization link.",
            error=parameters["error"],
            error_description=description,
        )
    code, state = parameters.get("code"), parameters.get("state")
    if not code or not state:
        raise InvalidEventError("The redirect has no code or no state; open the authorization link again.")
    return code, state


def _page(status: int, title: str, message: str) -> dict:
    body = (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p></body></html>"
    )
    return {"statusCode": status, "headers": dict(RESPONSE_HEADERS), "body": body}
