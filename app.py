#!/usr/bin/env python3
"""CDK entry point: read the context, build the stack and apply the cdk-nag AWS Solutions checks.

It makes no network call and no lookup, so `cdk synth` needs no AWS credentials.
"""

import sys

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from infra.config import ConfigError, load_config
from infra.stack import TokenKeeperStack


def main() -> None:
    app = cdk.App()
    try:
        config = load_config(app.node.try_get_context)
    except ConfigError as error:
        sys.exit(f"cdk.json: {error}")

    # The account stays unresolved, so the same template deploys into any account.
    TokenKeeperStack(app, config.stack_name, config=config, env=cdk.Environment(region=config.region))
    cdk.Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    app.synth()


if __name__ == "__main__":
    main()
