"""The authorization callback: a function URL that Salesforce redirects the admin's browser to after consent."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from infra.functions import REPO_ROOT, TokenKeeperFunctions
from infra.secrets import TokenKeeperSecrets
from infra.storage import TokenStorage

__all__ = ["TokenKeeperCallback", "CALLBACK_DIR", "CALLBACK_TIMEOUT", "CALLBACK_RESERVED_CONCURRENCY"]

CALLBACK_DIR = REPO_ROOT / "functions" / "callback"
# One code exchange through the proxy (3.05 s connect plus 20 s read), a revocation of the new
# chain if another caller created the connection meanwhile (the same again), and the secret
# reads and DynamoDB writes of a cold start.
CALLBACK_TIMEOUT = Duration.seconds(60)
# The URL is public, so a flood of requests must not take the account's concurrency. A handful
# of admins completing consent at the same moment fit in this.
CALLBACK_RESERVED_CONCURRENCY = 5
# The pending authorization's verifier is decrypted and a new connection's tokens are encrypted.
# The callback never calls GenerateDataKey.
CALLBACK_TOKEN_KEY_ACTIONS = ("kms:Encrypt", "kms:Decrypt")


class TokenKeeperCallback(Construct):
    """The callback function with a function URL of auth type NONE.

    A browser following Salesforce's redirect cannot sign a request, so the URL takes requests
    without AWS authentication. The handler accepts only a GET with the ``state`` of a pending
    authorization, which it deletes on first use, so a request without one changes nothing.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        functions: TokenKeeperFunctions,
        storage: TokenStorage,
        secrets: TokenKeeperSecrets,
    ) -> None:
        super().__init__(scope, construct_id)

        self.function = functions.add_function(
            "Callback",
            code_directory=CALLBACK_DIR,
            description="Finish connecting an org when Salesforce redirects the admin's browser after consent",
            timeout=CALLBACK_TIMEOUT,
            reserved_concurrency=CALLBACK_RESERVED_CONCURRENCY,
        )
        storage.grant_pending_authorization_access(self.function)
        secrets.grant_read(self.function)
        storage.grant_token_sealing(self.function, actions=CALLBACK_TOKEN_KEY_ACTIONS)
        region = self.function.stack.region
        storage.grant_data_key_decrypt(
            self.function,
            via_services=[f"dynamodb.{region}.amazonaws.com", f"secretsmanager.{region}.amazonaws.com"],
        )

        self.url = self.function.add_function_url(auth_type=lambda_.FunctionUrlAuthType.NONE)
