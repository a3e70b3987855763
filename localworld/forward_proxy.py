"""A real forward proxy on loopback that stands in for QuotaGuard Static.

It runs proxy.py in a child process with Basic authentication, so wrong credentials get 407, and
with :mod:`localworld.egress`, so upstream connections leave from 127.0.0.2 and 127.0.0.3 in turn.
Given a certificate and key, proxy.py speaks TLS on its listening socket, like QuotaGuard Shield.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from localworld import REPOSITORY_ROOT
from localworld.egress import EGRESS_ADDRESSES, LOG_ENVIRONMENT_VARIABLE

START_TIMEOUT_SECONDS = 30.0


class LocalProxy:
    """proxy.py on 127.0.0.1 with a free port, Basic auth and the alternating egress pair."""

    def __init__(
        self,
        username: str,
        password: str,
        *,
        workdir: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ):
        self.username = username
        self.password = password
        self._tls_files = (cert_file, key_file) if cert_file and key_file else None
        self._workdir = Path(workdir or tempfile.mkdtemp(prefix="localproxy-"))
        self._port_file = self._workdir / "proxy.port"
        self.tunnel_log = self._workdir / "tunnels.log"
        self._process: subprocess.Popen | None = None
        self.port = 0

    @property
    def egress_addresses(self) -> tuple[str, ...]:
        return EGRESS_ADDRESSES

    @property
    def scheme(self) -> str:
        """``https`` when the proxy speaks TLS to its clients, else ``http``."""
        return "https" if self._tls_files else "http"

    def url(self, *, username: str | None = None, password: str | None = None, scheme: str | None = None) -> str:
        """Return the proxy URL with percent-encoded credentials, as QuotaGuard shows it."""
        scheme = scheme or self.scheme
        user = quote(username if username is not None else self.username, safe="")
        secret = quote(password if password is not None else self.password, safe="")
        return f"{scheme}://{user}:{secret}@127.0.0.1:{self.port}"

    def start(self) -> "LocalProxy":
        self.tunnel_log.touch()
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY_ROOT), environment.get("PYTHONPATH")]))
        environment[LOG_ENVIRONMENT_VARIABLE] = str(self.tunnel_log)
        command = [
            sys.executable, "-m", "proxy",
            "--hostname", "127.0.0.1",
            "--port", "0",
            "--port-file", str(self._port_file),
            "--basic-auth", f"{self.username}:{self.password}",
            "--plugins", "localworld.egress.AlternatingEgressPlugin",
            "--threaded",
            "--num-acceptors", "1",
            "--timeout", "30",
            "--log-level", "CRITICAL",
        ]
        if self._tls_files:
            command += ["--cert-file", str(self._tls_files[0]), "--key-file", str(self._tls_files[1])]
        self._process = subprocess.Popen(
            command, env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"The local proxy exited at start with status {self._process.returncode}.")
            text = self._port_file.read_text().strip() if self._port_file.exists() else ""
            if text.isdigit():
                self.port = int(text)
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"The local proxy did not start within {START_TIMEOUT_SECONDS:g} s.")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None

    def tunnels(self) -> collections.Counter:
        """Count the upstream connections opened so far, by egress address."""
        lines = self.tunnel_log.read_text().splitlines()
        return collections.Counter(line.split(" ", 1)[0] for line in lines if line)
