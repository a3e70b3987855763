"""Field-level encryption of the tokens in a connection item.

The table is encrypted at rest by DynamoDB; on top of that the refresh and access tokens are
sealed with KMS under the connection id as encryption context, so read access to the table alone
reveals no token, and a sealed value copied onto another connection's item does not decrypt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from botocore.exceptions import BotoCoreError, ClientError

from tokenkeeper.errors import StoreError

__all__ = ["SealedTokens", "KmsTokenCipher"]

ENCRYPTION_CONTEXT_KEY = "connection_id"


@dataclass(frozen=True)
class SealedTokens:
    """The plaintext tokens of one connection version."""

    refresh_token: str = field(repr=False)
    access_token: str | None = field(default=None, repr=False)


class KmsTokenCipher:
    """Seal and open :class:`SealedTokens` with one KMS key; one KMS call per operation."""

    def __init__(self, kms_client, key_id: str):
        self._kms = kms_client
        self._key_id = key_id

    def seal(self, connection_id: str, tokens: SealedTokens) -> bytes:
        plaintext = json.dumps({"r": tokens.refresh_token, "a": tokens.access_token}, separators=(",", ":"))
        return self._encrypt(connection_id, plaintext, "the tokens")

    def open(self, connection_id: str, blob: bytes) -> SealedTokens:
        data = json.loads(self._decrypt(connection_id, blob))
        return SealedTokens(refresh_token=data["r"], access_token=data.get("a"))

    def seal_text(self, context_id: str, text: str) -> bytes:
        """Seal one secret string, such as a PKCE code verifier, under ``context_id``."""
        return self._encrypt(context_id, text, "a value")

    def open_text(self, context_id: str, blob: bytes) -> str:
        """Open a string sealed by :meth:`seal_text` under the same ``context_id``."""
        return self._decrypt(context_id, blob).decode("utf-8")

    def _encrypt(self, context_id: str, plaintext: str, described: str) -> bytes:
        try:
            response = self._kms.encrypt(
                KeyId=self._key_id,
                Plaintext=plaintext.encode("utf-8"),
                EncryptionContext={ENCRYPTION_CONTEXT_KEY: context_id},
            )
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"KMS could not encrypt {described} ({_code(exc)}).", connection_id=context_id) from None
        return response["CiphertextBlob"]

    def _decrypt(self, connection_id: str, blob: bytes) -> bytes:
        try:
            response = self._kms.decrypt(
                CiphertextBlob=blob,
                KeyId=self._key_id,
                EncryptionContext={ENCRYPTION_CONTEXT_KEY: connection_id},
            )
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"KMS could not decrypt the tokens ({_code(exc)}).", connection_id=connection_id) from None
        return response["Plaintext"]


def _code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code", "ClientError")
    return type(exc).__name__
