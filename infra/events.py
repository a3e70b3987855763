"""The EventBridge bus that carries the heartbeat's announcements about connections."""

from __future__ import annotations

from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from constructs import Construct

__all__ = ["TokenKeeperEvents"]


class TokenKeeperEvents(Construct):
    """A custom event bus named ``<stack_name>-events`` for the announcements of ``tokenkeeper.announcements``.

    A bus of its own, rather than the account's default bus, lets the functions' policies name
    one bus ARN, and keeps Token Keeper's events apart from the account's other traffic. ISVs
    subscribe with a rule on this bus that matches source ``tokenkeeper``.
    """

    def __init__(self, scope: Construct, construct_id: str, *, bus_name: str) -> None:
        super().__init__(scope, construct_id)
        self.bus = events.EventBus(
            self,
            "Bus",
            event_bus_name=bus_name,
            description="Token Keeper announcements: connections that need reauthorization or recovered",
        )

    def grant_put_events(self, grantee: iam.IGrantable) -> iam.Grant:
        """Grant events:PutEvents on this bus only."""
        return iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["events:PutEvents"],
            resource_arns=[self.bus.event_bus_arn],
        )
