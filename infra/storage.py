"""The connection table and the two KMS keys that protect what it stores."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

__all__ = ["TokenStorage", "HEARTBEAT_INDEX_NAME", "PENDING_EXPIRY_ATTRIBUTE"]

PARTITION_KEY = "connection_id"
HEARTBEAT_INDEX_NAME = "heartbeat-due"
# Present only while a connection's status is active, so the index contains active connections only.
HEARTBEAT_PARTITION_KEY = "heartbeat_partition"
# Epoch seconds of the last successful redemption. The heartbeat reads the oldest first.
HEARTBEAT_SORT_KEY = "last_redeemed_at"
HEARTBEAT_PROJECTED_ATTRIBUTES = ["status", "consecutive_failures"]
# Only pending authorizations (``pending#<state>`` items) carry this attribute: the epoch seconds
# after which ``connect`` rejects them. DynamoDB time to live deletes them some time after that,
# typically within a few days. Connection items keep their token expiry in
# ``access_token_expires_at``, which must never become a time to live attribute.
# The runtime writes it in whole epoch seconds, the form the DynamoDB guide documents.
PENDING_EXPIRY_ATTRIBUTE = "expires_at"

# The runtime seals tokens with this encryption context key, whose value is the connection id.
TOKEN_ENCRYPTION_CONTEXT_KEY = "connection_id"


class TokenStorage(Construct):
    """The DynamoDB table of connections, its at-rest key and the token field key.

    Two customer managed keys keep the two uses apart. ``data_key`` encrypts the table and the
    secrets at rest, and principals use it only through DynamoDB and Secrets Manager.
    ``token_key`` seals the token fields of each item under the connection id as encryption
    context, so reading the table without that key reveals no token.
    """

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)

        # Both keys outlive the stack: without them the retained table and its backups are unreadable.
        self.data_key = kms.Key(
            self,
            "DataKey",
            description="Token Keeper: encrypts the connection table and the secrets at rest",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.token_key = kms.Key(
            self,
            "TokenKey",
            description="Token Keeper: seals access and refresh tokens under their connection id",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )

        self.table = dynamodb.Table(
            self,
            "Connections",
            partition_key=dynamodb.Attribute(name=PARTITION_KEY, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
            encryption_key=self.data_key,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            deletion_protection=True,
            time_to_live_attribute=PENDING_EXPIRY_ATTRIBUTE,
            # The table stores the only copy of every live refresh token chain.
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.table.add_global_secondary_index(
            index_name=HEARTBEAT_INDEX_NAME,
            partition_key=dynamodb.Attribute(name=HEARTBEAT_PARTITION_KEY, type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name=HEARTBEAT_SORT_KEY, type=dynamodb.AttributeType.NUMBER),
            projection_type=dynamodb.ProjectionType.INCLUDE,
            non_key_attributes=HEARTBEAT_PROJECTED_ATTRIBUTES,
        )

    def grant_item_access(self, grantee: iam.IGrantable) -> iam.Grant:
        """Grant the single-item reads and writes of the refresh protocol on the table."""
        return iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"],
            resource_arns=[self.table.table_arn],
        )

    def grant_operator_actions(self, grantee: iam.IGrantable) -> iam.Grant:
        """Grant Scan and DeleteItem on the table, for the operator's actions run by the refresh function.

        ``list``, ``refresh`` with ``all_due`` and ``disable`` with ``all`` page through the table
        with Scan, and ``connect`` deletes the pending authorization it uses. None of them reads
        the heartbeat index, so the grant names the table only.
        """
        return iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["dynamodb:Scan", "dynamodb:DeleteItem"],
            resource_arns=[self.table.table_arn],
        )

    def grant_pending_authorization_access(self, grantee: iam.IGrantable) -> iam.Grant:
        """Grant GetItem, PutItem and DeleteItem on the table, for the authorization callback.

        Connecting an org reads a connection summary, deletes the pending authorization (and puts
        it back when the proxy fails before the exchange), and creates the connection item.
        """
        return iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem"],
            resource_arns=[self.table.table_arn],
        )

    def grant_heartbeat_query(self, grantee: iam.IGrantable) -> iam.Grant:
        """Grant Query on the ``heartbeat-due`` index only, for the heartbeat function."""
        return iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["dynamodb:Query"],
            resource_arns=[f"{self.table.table_arn}/index/{HEARTBEAT_INDEX_NAME}"],
        )

    def grant_token_sealing(
        self,
        grantee: iam.IGrantable,
        *,
        actions: tuple[str, ...] = ("kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"),
    ) -> None:
        """Grant ``actions`` (default Encrypt, Decrypt and GenerateDataKey) on the token key, with a connection id context only.

        ``ForAllValues`` alone also matches a request without any encryption context, so the
        ``Null`` clause requires the context to be present.
        """
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=list(actions),
                resources=[self.token_key.key_arn],
                conditions={
                    "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": [TOKEN_ENCRYPTION_CONTEXT_KEY]},
                    "Null": {"kms:EncryptionContextKeys": "false"},
                },
            )
        )

    def grant_data_key_decrypt(self, grantee: iam.IGrantable, *, via_services: list[str]) -> None:
        """Grant Decrypt on the at-rest key, only in calls made through ``via_services``.

        Secrets Manager decrypts a secret with the caller's credentials, and so does DynamoDB
        for the table key it caches per principal, so a reader needs Decrypt and no other action.
        NOTE: no test here runs DynamoDB against a real KMS key. If DynamoDB requires another
        action from the caller, the call fails with a KMS AccessDeniedException naming it.
        """
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["kms:Decrypt"],
                resources=[self.data_key.key_arn],
                conditions={"StringEquals": {"kms:ViaService": via_services}},
            )
        )
