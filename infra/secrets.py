"""The two Secrets Manager secrets: the Salesforce client credentials and the proxy URL."""

from __future__ import annotations

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import Construct

__all__ = ["TokenKeeperSecrets"]

_ROTATION_REASON = (
    "Salesforce issues the client secret and QuotaGuard issues the proxy password; neither offers "
    "an API a rotation function could call, so operators rotate both by hand as docs/deploy.md describes."
)


class TokenKeeperSecrets(Construct):
    """The client credentials secret and the proxy URL secret, created empty or imported by name.

    A created secret starts with a random placeholder and is encrypted with ``encryption_key``;
    the operator writes the real value with ``aws secretsmanager put-secret-value``. An imported
    secret (``client_secret_name`` or ``proxy_secret_name`` in the context) is used as it is.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        encryption_key: kms.IKey,
        client_secret_name: str = "",
        proxy_secret_name: str = "",
    ) -> None:
        super().__init__(scope, construct_id)

        self.client_credentials, self.client_credentials_id, client_policy_arn = self._secret(
            "ClientCredentials",
            imported_name=client_secret_name,
            encryption_key=encryption_key,
            description='Salesforce External Client App credentials: {"client_id": "...", "client_secret": "..."}',
        )
        self.proxy_url, self.proxy_url_id, proxy_policy_arn = self._secret(
            "ProxyUrl",
            imported_name=proxy_secret_name,
            encryption_key=encryption_key,
            description="QuotaGuard Static proxy URL as plain text: http://USER:PASSWORD@HOST:9293",
        )
        self._policy_arns = [client_policy_arn, proxy_policy_arn]

    def grant_read(self, grantee: iam.IGrantable) -> iam.Grant:
        """Grant GetSecretValue on both secrets; ``TokenStorage.grant_data_key_decrypt`` grants the KMS side."""
        return iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["secretsmanager:GetSecretValue"],
            resource_arns=self._policy_arns,
        )

    def _secret(
        self, construct_id: str, *, imported_name: str, encryption_key: kms.IKey, description: str
    ) -> tuple[secretsmanager.ISecret, str, str]:
        """Return the secret, the SecretId the runtime passes to GetSecretValue and its policy ARN."""
        if imported_name:
            secret = secretsmanager.Secret.from_secret_name_v2(self, construct_id, imported_name)
            # Secrets Manager appends a random six-character suffix to the ARN of every secret,
            # and an import by name cannot know it, so the policy matches it with six ? wildcards.
            policy_arn = Stack.of(self).format_arn(
                service="secretsmanager",
                resource="secret",
                resource_name=f"{imported_name}-??????",
                arn_format=ArnFormat.COLON_RESOURCE_NAME,
            )
            return secret, imported_name, policy_arn

        secret = secretsmanager.Secret(
            self,
            construct_id,
            description=description,
            encryption_key=encryption_key,
            # A random placeholder that no client id or proxy URL can be mistaken for.
            generate_secret_string=secretsmanager.SecretStringGenerator(
                exclude_punctuation=True, password_length=32
            ),
        )
        NagSuppressions.add_resource_suppressions(
            secret,
            [NagPackSuppression(id="AwsSolutions-SMG4", reason=_ROTATION_REASON)],
            apply_to_children=False,
        )
        return secret, secret.secret_arn, secret.secret_arn
