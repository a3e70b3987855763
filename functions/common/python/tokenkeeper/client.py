"""Call the refresh function from another Lambda: one call returns the token or raises.

    from tokenkeeper.client import TokenKeeperClient

    tokens = TokenKeeperClient("arn:aws:lambda:...:function:tokenkeeper-refresh")
    token = tokens.get_access_token("org-00D5g000004abcd")
    requests.get(f"{token.instance_url}/services/data/v62.0/limits", headers={"Authorization": f"Bearer {token.access_token}"})
"""

from __future__ import annotations

import json

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from tokenkeeper.errors import ERROR_CLASSES_BY_KIND, ConfigurationError, TokenKeeperError
from tokenkeeper.refresher import AccessToken

__all__ = ["TokenKeeperClient", "RefreshFunctionError"]


class RefreshFunctionError(TokenKeeperError):
    """The refresh function could not be invoked, or it failed without a typed error."""

    kind = "refresh_function_failed"
    retryable = True


class TokenKeeperClient:
    """Invoke the refresh function synchronously and turn its response into a token or an error."""

    def __init__(self, function_name: str, *, lambda_client=None):
        if not function_name:
            raise ValueError("function_name must be the refresh function's name or ARN.")
        self._function_name = function_name
        self._lambda = lambda_client or boto3.client("lambda")

    def get_access_token(self, connection_id: str, *, min_ttl_seconds: int = 300, force: bool = False) -> AccessToken:
        """Return an access token valid for ``min_ttl_seconds``; raise the typed error otherwise."""
        event = {"connection_id": connection_id, "min_ttl_seconds": min_ttl_seconds, "force": force}
        try:
            answer = self._lambda.invoke(
                FunctionName=self._function_name,
                InvocationType="RequestResponse",
                Payload=json.dumps(event).encode("utf-8"),
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._invoke_error(exc, connection_id) from None

        raw = answer["Payload"].read()
        if answer.get("FunctionError"):
            raise RefreshFunctionError(
                f"The refresh function failed with an unhandled {answer['FunctionError']} error; see its logs.",
                connection_id=connection_id,
            )
        try:
            body = json.loads(raw)
        except ValueError:
            raise RefreshFunctionError("The refresh function returned a body that is not JSON.", connection_id=connection_id) from None
        if not isinstance(body, dict):
            raise RefreshFunctionError("The refresh function returned a body that is not a JSON object.", connection_id=connection_id)
        if body.get("ok") is True:
            return AccessToken(
                connection_id=body["connection_id"],
                access_token=body["access_token"],
                instance_url=body.get("instance_url"),
                expires_at=float(body["expires_at"]),
                source=body["source"],
                version=int(body["version"]),
            )
        raise _error_from_payload(body.get("error") or {}, connection_id)


    def _invoke_error(self, exc: Exception, connection_id: str) -> TokenKeeperError:
        code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else type(exc).__name__
        if code == "ResourceNotFoundException":
            return ConfigurationError(
                f"The refresh function {self._function_name!r} was not found; pass the RefreshFunctionName or "
                "RefreshFunctionArn output of the deployed stack.",
                connection_id=connection_id,
            )
        if code in {"AccessDeniedException", "AccessDenied"}:
            return ConfigurationError(
                f"The caller may not invoke {self._function_name!r}; grant it lambda:InvokeFunction with the "
                "stack's grant_invoke_refresh method.",
                connection_id=connection_id,
            )
        return RefreshFunctionError(f"Invoking {self._function_name!r} failed ({code}).", connection_id=connection_id)


def _error_from_payload(payload: dict, connection_id: str) -> TokenKeeperError:
    error_class = ERROR_CLASSES_BY_KIND.get(payload.get("kind"), RefreshFunctionError)
    message = payload.get("message") or "The refresh function reported an error without a message."
    error = error_class.__new__(error_class)
    TokenKeeperError.__init__(error, message, connection_id=payload.get("connection_id") or connection_id)
    for name in ("status", "error", "error_description", "rotation_lost_in_transit", "ambiguous"):
        if name in payload:
            setattr(error, name, payload[name])
    return error
