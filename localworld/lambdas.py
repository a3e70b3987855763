"""Run the functions' handlers locally: a Lambda context, a handler loader and an Invoke endpoint.

Lambda itself cannot run here, so :class:`LocalLambdaApi` serves the Lambda Invoke API on
127.0.0.1 and calls the handler in-process. A boto3 Lambda client aimed at it exercises the same
request and response handling as a real invocation, including ``X-Amz-Function-Error``.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import re
import sys
import threading
import traceback
import uuid
from urllib.parse import unquote
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

from localworld import REPOSITORY_ROOT

INVOKE_PATH = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)/invocations$")


@dataclass
class LocalContext:
    """The attributes of Lambda's context object that Powertools reads."""

    function_name: str = "tokenkeeper-refresh"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:tokenkeeper-refresh"
    aws_request_id: str = ""
    remaining_time_ms: int = 60_000

    def __post_init__(self) -> None:
        self.aws_request_id = self.aws_request_id or str(uuid.uuid4())

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_time_ms


def load_function(name: str) -> ModuleType:
    """Import ``functions/<name>/app.py`` under a unique module name, as Lambda would load it."""
    module_name = f"tokenkeeper_function_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = REPOSITORY_ROOT / "functions" / name / "app.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


class LocalLambdaApi:
    """An HTTP server on 127.0.0.1 that serves Lambda's Invoke call with local handlers."""

    def __init__(self, handlers: dict[str, Callable[[dict, LocalContext], dict]]):
        self._handlers = handlers
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._request_handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "LocalLambdaApi":
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _request_handler(self):
        handlers = self._handlers

        class InvokeHandler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (name fixed by http.server)
                match = INVOKE_PATH.match(unquote(self.path.split("?", 1)[0]))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if not match or match.group("name").rsplit(":", 1)[-1] not in handlers:
                    self._reply(404, {"Type": "User", "message": "Function not found"}, {"x-amzn-ErrorType": "ResourceNotFoundException"})
                    return
                name = match.group("name").rsplit(":", 1)[-1]
                try:
                    event = json.loads(body or b"{}")
                    result = handlers[name](event, LocalContext(function_name=name))
                except Exception as exc:  # reported to the caller as Lambda reports an unhandled error
                    payload = {"errorMessage": str(exc), "errorType": type(exc).__name__, "stackTrace": traceback.format_tb(exc.__traceback__)}
                    self._reply(200, payload, {"X-Amz-Function-Error": "Unhandled"})
                    return
                self._reply(200, result, {})

            def _reply(self, status: int, payload, headers: dict):
                data = json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Amz-Executed-Version", "$LATEST")
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return InvokeHandler
