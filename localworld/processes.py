"""Refresh callers in other processes, aimed at a local world that runs in the parent process.

A world runs in one process, while Lambda containers are separate processes. :class:`WorkerSpec`
contains what a child needs to build its own runtime: the environment the stack would set, the
endpoints and the world clock's offset. :func:`serve_rounds` runs several callers in one child,
one thread each, at a barrier shared with the parent. Children report a SHA-256 digest of each
access token, never the token.

Run as ``python -m localworld.processes --connection-id ID`` with the world's environment in
``TOKENKEEPER_WORKER_SPEC`` (JSON) to make one refresh call and print its outcome as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass

import localworld  # noqa: F401  (puts the shared code on sys.path)

__all__ = ["WorkerSpec", "SharedOffsetClock", "build_runtime", "serve_rounds", "token_digest", "SPEC_VARIABLE"]

SPEC_VARIABLE = "TOKENKEEPER_WORKER_SPEC"
COMMAND_TIMEOUT_SECONDS = 120.0
BARRIER_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class WorkerSpec:
    """The settings and endpoints a child process needs to build a runtime aimed at the parent's world."""

    environment: dict
    aws_endpoint_url: str
    dynamodb_endpoint_url: str
    region: str
    clock_offset: float = 0.0

    @classmethod
    def for_world(cls, world, *, dynamodb_endpoint_url: str | None = None, **settings) -> "WorkerSpec":
        environment = world.environment()
        environment.update({key: str(value) for key, value in settings.items()})
        return cls(
            environment=environment,
            aws_endpoint_url=world.aws.endpoint_url,
            dynamodb_endpoint_url=dynamodb_endpoint_url or world.aws.endpoint_url,
            region=world.aws.session.region_name,
            clock_offset=world.clock() - time.time(),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "WorkerSpec":
        return cls(**json.loads(text))


class SharedOffsetClock:
    """``time.time()`` plus an offset that the parent moves through a shared ``multiprocessing.Value``."""

    def __init__(self, offset) -> None:
        self._offset = offset

    def __call__(self) -> float:
        return time.time() + self._offset.value


def build_runtime(spec: WorkerSpec, clock=None):
    """Build a runtime (one container) from ``spec``; DynamoDB may go through a fault relay."""
    import boto3

    from tokenkeeper.config import Settings
    from tokenkeeper.runtime import AWS_CLIENT_CONFIG, Runtime

    session = boto3.session.Session(
        region_name=spec.region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        aws_session_token="testing",
    )
    if clock is None:
        offset = spec.clock_offset
        clock = lambda: time.time() + offset  # noqa: E731
    return Runtime(
        Settings.from_environment(spec.environment),
        session=session,
        dynamodb_client=session.client("dynamodb", endpoint_url=spec.dynamodb_endpoint_url, config=AWS_CLIENT_CONFIG),
        kms_client=session.client("kms", endpoint_url=spec.aws_endpoint_url, config=AWS_CLIENT_CONFIG),
        secrets_client=session.client("secretsmanager", endpoint_url=spec.aws_endpoint_url, config=AWS_CLIENT_CONFIG),
        clock=clock,
    )


def token_digest(access_token: str) -> str:
    """Return a SHA-256 prefix that tells tokens apart without revealing them."""
    return hashlib.sha256(access_token.encode("utf-8")).hexdigest()[:16]


def call_once(runtime, connection_id: str, *, force: bool = False) -> dict:
    """Make one refresh call; return its outcome with the access token replaced by its digest."""
    from tokenkeeper.errors import TokenKeeperError

    try:
        token = runtime.refresher().get_token(connection_id, force=force)
    except TokenKeeperError as exc:
        return {"ok": False, "kind": exc.kind, "type": type(exc).__name__, "message": exc.message}
    return {"ok": True, "digest": token_digest(token.access_token), "source": token.source, "version": token.version}


def serve_rounds(spec: WorkerSpec, callers: int, offset, barrier, commands, results) -> None:
    """Run ``callers`` containers in this process; each round, all wait at ``barrier``, then call.

    ``commands`` delivers ``(round_number, connection_id)`` tuples and finally None; ``results``
    receives ``(round_number, outcome)`` per caller, and ``("ready", pid)`` once at start.
    """
    clock = SharedOffsetClock(offset)
    runtimes = [build_runtime(spec, clock) for _ in range(callers)]
    for runtime in runtimes:
        # Reads the secrets and builds the proxy pool now, so the first round measures calls only.
        runtime.refresher()
    results.put(("ready", os.getpid()))

    while True:
        command = commands.get(timeout=COMMAND_TIMEOUT_SECONDS)
        if command is None:
            return
        round_number, connection_id = command

        def call(runtime) -> None:
            barrier.wait(timeout=BARRIER_TIMEOUT_SECONDS)
            results.put((round_number, call_once(runtime, connection_id)))

        threads = [threading.Thread(target=call, args=(runtime,)) for runtime in runtimes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=COMMAND_TIMEOUT_SECONDS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Make one refresh call against a local world.")
    parser.add_argument("--connection-id", required=True)
    arguments = parser.parse_args(argv)
    spec = WorkerSpec.from_json(os.environ[SPEC_VARIABLE])
    outcome = call_once(build_runtime(spec), arguments.connection_id)
    print(json.dumps(outcome), flush=True)
    return 0 if outcome["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
