"""The product's exception hierarchy.

Every error the product raises derives from :class:`TokenKeeperError`. Each class carries a
``kind``, a short stable identifier used as the metric dimension, in the error payload returned to
calling Lambdas and in the connection item's ``last_error_kind``. Messages name the value at fault
and the fix, and never contain a token, a client secret or a proxy password.
"""

from __future__ import annotations

__all__ = [
    "TokenKeeperError",
    "ConfigurationError",
    "InvalidEventError",
    "ProxyUrlError",
    "ProxyAuthenticationError",
    "ProxyConnectionError",
    "EgressBlockedError",
    "ClientCredentialsError",
    "SalesforceHostError",
    "ConnectionNotFoundError",
    "ConnectionExistsError",
    "ConnectionInactiveError",
    "AuthorizationStateError",
    "ReauthorizationRequiredError",
    "TokenBusyError",
    "LeaseWaitTimeoutError",
    "SalesforceOAuthError",
    "SalesforceUnavailableError",
    "SalesforceResponseError",
    "StoreError",
    "TokenRescuedError",
    "RescueNotFoundError",
    "ERROR_CLASSES_BY_KIND",
]


class TokenKeeperError(Exception):
    """Root of every error the product raises."""

    kind = "internal"
    retryable = False

    def __init__(self, message: str, *, connection_id: str | None = None):
        super().__init__(message)
        self.message = message
        self.connection_id = connection_id

    def to_payload(self) -> dict:
        """Describe the error as the JSON object the refresh function returns to callers."""
        return {
            "kind": self.kind,
            "type": type(self).__name__,
            "message": self.message,
            "retryable": self.retryable,
            "connection_id": self.connection_id,
        }


class ConfigurationError(TokenKeeperError):
    """A setting, secret or deployment value is missing or invalid; retrying does not help."""

    kind = "configuration"


class InvalidEventError(TokenKeeperError):
    """The invocation event is malformed; nothing was read or changed."""

    kind = "invalid_event"


class ProxyUrlError(ConfigurationError):
    """The proxy URL stored in Secrets Manager cannot be used as it is."""

    kind = "proxy_url_invalid"


class ProxyAuthenticationError(ConfigurationError):
    """The proxy returned 407: the credentials in the proxy URL are wrong."""

    kind = "proxy_authentication_failed"


class ProxyConnectionError(TokenKeeperError):
    """The proxy could not be reached or refused the tunnel; nothing reached Salesforce."""

    kind = "proxy_unreachable"
    retryable = True


class EgressBlockedError(ConfigurationError):
    """Salesforce rejected the source address: the request did not leave from an allowlisted IP."""

    kind = "egress_not_allowlisted"


class ClientCredentialsError(ConfigurationError):
    """Salesforce returned ``invalid_client``: the consumer key or secret is wrong."""

    kind = "client_misconfigured"


class SalesforceHostError(ConfigurationError):
    """A token host is not a Salesforce login host, so no credential may be sent to it."""

    kind = "salesforce_host_rejected"


class ConnectionNotFoundError(TokenKeeperError):
    """No connection item exists for the requested connection id."""

    kind = "connection_not_found"


class ConnectionExistsError(TokenKeeperError):
    """A connection with this id already exists and was not overwritten."""

    kind = "connection_exists"


class ConnectionInactiveError(TokenKeeperError):
    """The connection's status is not ``active`` (reauthorization required, disabled or revoked)."""

    kind = "connection_inactive"

    def __init__(self, message: str, *, connection_id: str | None = None, status: str = ""):
        super().__init__(message, connection_id=connection_id)
        self.status = status

    def to_payload(self) -> dict:
        payload = super().to_payload()
        payload["status"] = self.status
        return payload


class AuthorizationStateError(TokenKeeperError):
    """The ``state`` of an authorization redirect matches no pending authorization, or it expired."""

    kind = "authorization_state_invalid"


class ReauthorizationRequiredError(TokenKeeperError):
    """The refresh token chain is dead; the subscriber must authorize the app again."""

    kind = "chain_dead"

    def __init__(
        self,
        message: str,
        *,
        connection_id: str | None = None,
        error: str = "",
        error_description: str = "",
        rotation_lost_in_transit: bool = False,
    ):
        super().__init__(message, connection_id=connection_id)
        self.error = error
        self.error_description = error_description
        self.rotation_lost_in_transit = rotation_lost_in_transit

    def to_payload(self) -> dict:
        payload = super().to_payload()
        payload["rotation_lost_in_transit"] = self.rotation_lost_in_transit
        return payload


class TokenBusyError(TokenKeeperError):
    """Salesforce is still processing another redemption of the same refresh token."""

    kind = "token_busy"
    retryable = True


class LeaseWaitTimeoutError(TokenKeeperError):
    """Another caller held the refresh lease for longer than this caller may wait."""

    kind = "lease_wait_timeout"
    retryable = True


class SalesforceOAuthError(TokenKeeperError):
    """Salesforce returned an OAuth error that has no more specific class."""

    kind = "oauth_error"

    def __init__(
        self,
        message: str,
        *,
        connection_id: str | None = None,
        error: str = "",
        error_description: str = "",
        status: int | None = None,
    ):
        super().__init__(message, connection_id=connection_id)
        self.error = error
        self.error_description = error_description
        self.status = status


class SalesforceUnavailableError(TokenKeeperError):
    """Salesforce or the network failed transiently (5xx, timeout, rate limit) after retries."""

    kind = "transient"
    retryable = True

    def __init__(self, message: str, *, connection_id: str | None = None, ambiguous: bool = False):
        super().__init__(message, connection_id=connection_id)
        # True when a request may have reached Salesforce and rotated the token.
        self.ambiguous = ambiguous


class SalesforceResponseError(TokenKeeperError):
    """Salesforce (or something in between) returned a body the product cannot read."""

    kind = "invalid_response"
    retryable = True


class StoreError(TokenKeeperError):
    """DynamoDB or KMS failed while reading or writing a connection."""

    kind = "store_unavailable"
    retryable = True


class TokenRescuedError(TokenKeeperError):
    """A rotated token could not be stored in the connection item and went to the rescue record."""

    kind = "token_rescued"


class RescueNotFoundError(TokenKeeperError):
    """No rescue record exists for the version after the connection's current one."""

    kind = "rescue_not_found"


ERROR_CLASSES_BY_KIND: dict[str, type[TokenKeeperError]] = {
    cls.kind: cls
    for cls in [
        TokenKeeperError,
        ConfigurationError,
        InvalidEventError,
        ProxyUrlError,
        ProxyAuthenticationError,
        ProxyConnectionError,
        EgressBlockedError,
        ClientCredentialsError,
        SalesforceHostError,
        ConnectionNotFoundError,
        ConnectionExistsError,
        ConnectionInactiveError,
        AuthorizationStateError,
        ReauthorizationRequiredError,
        TokenBusyError,
        LeaseWaitTimeoutError,
        SalesforceOAuthError,
        SalesforceUnavailableError,
        SalesforceResponseError,
        StoreError,
        TokenRescuedError,
        RescueNotFoundError,
    ]
}
