"""The client credentials and the proxy URL, read from Secrets Manager with caching.

Powertools' parameters provider caches each value for ``max_age`` seconds, so a warm container
makes no Secrets Manager call per request, and a rotated secret is picked up within that time.
"""

from __future__ import annotations

from aws_lambda_powertools.utilities.parameters import SecretsProvider
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError, TransformParameterError

from tokenkeeper.errors import ConfigurationError
from tokenkeeper.salesforce import ClientCredentials
from tokenkeeper.transport import ProxyUrl

__all__ = ["SecretSource"]


class SecretSource:
    """Read the two secrets the product needs and validate their shape."""

    def __init__(self, secrets_client, *, client_secret_id: str, proxy_secret_id: str, max_age_seconds: int):
        self._provider = SecretsProvider(boto3_client=secrets_client)
        self._client_secret_id = client_secret_id
        self._proxy_secret_id = proxy_secret_id
        self._max_age = max_age_seconds

    def client_credentials(self) -> ClientCredentials:
        """Return the consumer key and secret from the JSON client credentials secret."""
        try:
            value = self._provider.get(self._client_secret_id, transform="json", max_age=self._max_age)
        except TransformParameterError:
            raise ConfigurationError(
                f"The secret {self._client_secret_id!r} is not JSON; store "
                '{"client_id": "<consumer key>", "client_secret": "<consumer secret>"}.'
            ) from None
        except GetParameterError as exc:
            raise ConfigurationError(
                f"The secret {self._client_secret_id!r} could not be read ({_reason(exc)}); check that it exists, "
                "has a value, and that the function's role may read it."
            ) from None
        if not isinstance(value, dict):
            raise ConfigurationError(f"The secret {self._client_secret_id!r} must be a JSON object.")
        client_id = value.get("client_id")
        client_secret = value.get("client_secret")
        missing = [name for name, field in (("client_id", client_id), ("client_secret", client_secret)) if not isinstance(field, str) or not field]
        if missing:
            raise ConfigurationError(
                f"The secret {self._client_secret_id!r} is missing {' and '.join(missing)}; store "
                '{"client_id": "<consumer key>", "client_secret": "<consumer secret>"}.'
            )
        return ClientCredentials(client_id=client_id, client_secret=client_secret)

    def proxy_url(self) -> ProxyUrl:
        """Return the validated proxy URL from its secret."""
        try:
            raw = self._provider.get(self._proxy_secret_id, max_age=self._max_age)
        except GetParameterError as exc:
            raise ConfigurationError(
                f"The secret {self._proxy_secret_id!r} could not be read ({_reason(exc)}); check that it exists, "
                "has a value, and that the function's role may read it."
            ) from None
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace")
        return ProxyUrl.parse(raw)


def _reason(exc: Exception) -> str:
    cause = exc.__cause__ or exc.__context__
    if cause is not None and hasattr(cause, "response"):
        return cause.response.get("Error", {}).get("Code", type(cause).__name__)
    return type(cause or exc).__name__
