"""Restore a rescued refresh token onto its connection item, as an operator command.

When the refresh function redeems a refresh token but cannot write the rotated one to the
connection item, it seals the new tokens into a rescue record (key ``rescue#<id>#<version>``) and
emits the ``TokensRescued`` metric. The next redemption adopts that record by itself; this command
does the same at once, so an operator can respond to the alarm without waiting for traffic::

    python -m tokenkeeper.rescue --connection-id org-00D5g000004abcd

It reads its settings from the same environment variables as the refresh function. It prints the
connection id and the new version, never a token.
"""

from __future__ import annotations

import argparse
import sys
import time

from tokenkeeper import observability as obs
from tokenkeeper.errors import (
    ConnectionInactiveError,
    ConnectionNotFoundError,
    RescueNotFoundError,
    StoreError,
    TokenKeeperError,
)
from tokenkeeper.store import STATUS_ACTIVE

__all__ = ["restore_rescued_token", "main"]


def restore_rescued_token(runtime, connection_id: str) -> int:
    """Store the rescued tokens of the next version on the item; return the new version.

    The write is conditional on the version read here, so it cannot overwrite a rotation stored
    meanwhile. The rescued access token is recorded as expired, because its expiry is unknown, so
    the next request redeems the rescued refresh token, the newest of the chain.
    """
    store = runtime.store
    record = store.get(connection_id)
    if record is None:
        raise ConnectionNotFoundError(f"No connection {connection_id!r} exists.", connection_id=connection_id)
    if record.status != STATUS_ACTIVE:
        raise ConnectionInactiveError(
            f"Connection {connection_id!r} is {record.status}, so its rescued token is not restored; the "
            "subscriber must authorize the app again.",
            connection_id=connection_id,
            status=record.status,
        )

    next_version = record.version + 1
    rescued = store.get_rescue(connection_id, next_version)
    if rescued is None:
        raise RescueNotFoundError(
            f"Connection {connection_id!r} has no rescue record for version {next_version} (it is at version "
            f"{record.version}), so there is nothing to restore.",
            connection_id=connection_id,
        )

    now = time.time()
    saved = store.save_rotation(
        record,
        refresh_token=rescued.refresh_token,
        access_token=rescued.access_token or "",
        access_token_expires_at=now - 1,
        instance_url=None,
        org_id=None,
        user_id=None,
        session_seconds=record.session_seconds,
        now=now,
    )
    if saved is None:
        raise StoreError(
            f"Connection {connection_id!r} moved past version {record.version} while its rescued token was "
            "being restored; run the command again to see its current state.",
            connection_id=connection_id,
        )
    obs.logger.warning("Restored a rescued token", extra={"connection_id": connection_id, "version_after": saved.version})
    return saved.version


def main(argv: list[str] | None = None, runtime=None) -> int:
    """Run the command line; return the process exit status (0 restored, 1 failed, 2 usage)."""
    parser = argparse.ArgumentParser(
        prog="python -m tokenkeeper.rescue",
        description="Restore the rescued refresh token of a connection onto its item.",
    )
    parser.add_argument("--connection-id", required=True, help="the connection whose rescued token to restore")
    arguments = parser.parse_args(argv)

    try:
        if runtime is None:
            runtime = _runtime_from_environment()
        version = restore_rescued_token(runtime, arguments.connection_id)
    except TokenKeeperError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(f"Restored the rescued token of connection {arguments.connection_id!r}; it is now at version {version}.")
    return 0


def _runtime_from_environment():
    # Imported here so that importing this module needs no AWS configuration.
    from tokenkeeper.config import Settings
    from tokenkeeper.runtime import Runtime

    return Runtime(Settings.from_environment())


if __name__ == "__main__":
    sys.exit(main())
