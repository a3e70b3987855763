"""The baseline: the integration that the QuotaGuard guide for Salesforce shows.

Every token request is one ``requests.post`` to the token endpoint through the proxy, with no
cache, no lock and no retry. The rotated refresh token goes into a plain dict that every caller of
the app shares, as the app's own storage would hold it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import requests

TOKEN_PATH = "/services/oauth2/token"
# The guide's call has no timeout. One is set here so that a stuck request cannot hang the run.
REQUEST_TIMEOUT_SECONDS = (5.0, 30.0)


@dataclass(frozen=True)
class NaiveOutcome:
    """The result of one naive token request and how long the caller waited for it."""

    ok: bool
    seconds: float
    error: str | None = None
    error_description: str | None = None


class NaiveIntegration:
    """One app using the guide's integration against ``world``, with its own refresh token chain."""

    def __init__(self, world):
        self._world = world
        self._token_url = world.salesforce.base_url + TOKEN_PATH
        self._proxies = {"https": world.proxy.url()}
        self._verify = str(world.ca_path)
        self.storage: dict[str, str] = {}
        self.reauthorizations = 0
        self._reauthorization_lock = threading.Lock()
        self.authorize()

    def authorize(self) -> None:
        """Start a new refresh token chain, as the subscriber's admin connecting the org does."""
        self.storage["refresh_token"] = self._world.salesforce.create_refresh_token(self._world.secrets.client_id)

    def request_token(self) -> NaiveOutcome:
        """Redeem the stored refresh token, as the guide does for every token request."""
        started = time.perf_counter()
        response = requests.post(
            self._token_url,
            data={
                "grant_type": "refresh_token",
                "client_id": self._world.secrets.client_id,
                "client_secret": self._world.secrets.client_secret,
                "refresh_token": self.storage["refresh_token"],
            },
            proxies=self._proxies,
            verify=self._verify,
            timeout=REQUEST_TIMEOUT_SECONDS,
        )
        with response:
            payload = response.json()
        seconds = time.perf_counter() - started
        if response.ok:
            # The guide: persist the new refresh token immediately, because rotation has
            # invalidated the old one.
            self.storage["refresh_token"] = payload["refresh_token"]
            return NaiveOutcome(ok=True, seconds=seconds)
        return NaiveOutcome(
            ok=False, seconds=seconds, error=payload.get("error"), error_description=payload.get("error_description")
        )

    def reauthorize_if_revoked(self) -> bool:
        """Start a new chain if the stored one was revoked, and return whether that happened.

        A replayed refresh token revokes its whole chain, and the naive app cannot recover by
        itself: every later request fails until the subscriber authorizes the app again. The
        benchmark counts each such loss and reconnects at once, so the run can go on.
        """
        with self._reauthorization_lock:
            if self._world.salesforce.chain_state(self.storage["refresh_token"]) != "revoked":
                return False
            self.authorize()
            self.reauthorizations += 1
            return True
