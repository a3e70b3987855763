"""Fixtures of the infrastructure tests: one full synth of the stack per session.

The full synth runs the cdk-nag AWS Solutions checks and the local bundling of the shared layer,
with the context of cdk.json, as `cdk synth` does. Tests that need other context values build a
second, lighter stack with bundling skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template
from cdk_nag import AwsSolutionsChecks

from infra.config import StackConfig
from infra.stack import TokenKeeperStack

REPO_ROOT = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "synth: runs the CDK command-line tool (never skipped; needs node_modules)")


@dataclass(frozen=True)
class Synthesized:
    stack: TokenKeeperStack
    template: Template
    assembly_dir: Path

    def resources(self, resource_type: str) -> dict[str, dict]:
        return self.template.find_resources(resource_type)

    def only(self, resource_type: str) -> tuple[str, dict]:
        """Return the logical id and body of the one resource of ``resource_type``."""
        found = self.resources(resource_type)
        assert len(found) == 1, f"expected one {resource_type}, found {sorted(found)}"
        return next(iter(found.items()))


def synthesize(
    context: Mapping[str, Any],
    outdir: Path,
    *,
    bundling: bool = True,
    extend: Callable[[TokenKeeperStack], None] | None = None,
) -> Synthesized:
    """Build the stack with ``context`` and the cdk-nag checks, as app.py does, and synthesize it.

    ``extend`` receives the stack before synthesis, to add what a later function would add.
    """
    app_context = dict(context)
    if not bundling:
        # An empty list of bundling stacks makes CDK skip asset bundling (no pip install).
        app_context["aws:cdk:bundling-stacks"] = []
    app = cdk.App(context=app_context, outdir=str(outdir))
    config = StackConfig.from_mapping(context)
    stack = TokenKeeperStack(app, config.stack_name, config=config, env=cdk.Environment(region=config.region))
    if extend is not None:
        extend(stack)
    cdk.Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    assembly = app.synth()
    return Synthesized(stack=stack, template=Template.from_stack(stack), assembly_dir=Path(assembly.directory))


@pytest.fixture(scope="session")
def cdk_json_context() -> dict[str, Any]:
    """The context block of cdk.json, as `cdk synth` passes it to app.py."""
    return json.loads((REPO_ROOT / "cdk.json").read_text(encoding="utf-8"))["context"]


@pytest.fixture(scope="session")
def synthesize_stack() -> Callable[..., Synthesized]:
    """The :func:`synthesize` function, for tests that need other context values."""
    return synthesize


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory: pytest.TempPathFactory, cdk_json_context) -> Synthesized:
    """The stack as `cdk synth` builds it from cdk.json, with bundling and cdk-nag."""
    return synthesize(cdk_json_context, tmp_path_factory.mktemp("cdk.out"))
