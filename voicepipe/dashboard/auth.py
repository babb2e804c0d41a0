"""HTTP basic authentication for every request, pages and /api alike (VOICEPIPE_DASHBOARD_AUTH),
checked by the exporter's own functions: one rule for every credential variable.

An operator signs in as themselves: the credential's user name is looked up as a directory
user, and only platform staff get the retry forms (pages.py). The signed-in name is kept in
the request's state; forms that change anything carry a CSRF token bound to it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

AUTH_VARIABLE = "VOICEPIPE_DASHBOARD_AUTH"
REALM = "voicepipe dashboard"
# Per process: a token is good until the dashboard restarts (a form loaded before then is sent again).
_CSRF_KEY = secrets.token_bytes(32)


class BasicAuth:
    """Refuses every request without valid credentials (401 with a Basic challenge)."""

    def __init__(self, app: ASGIApp, credentials: list[tuple[str, str]]) -> None:
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from voicepipe.observability.exporter import authorized

        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            header = headers.get("authorization")
            if not authorized(header, self.credentials):
                response = PlainTextResponse(
                    "authentication required\n", status_code=401,
                    headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'})
                await response(scope, receive, send)
                return
            assert header is not None
            scope.setdefault("state", {})["operator"] = base64.b64decode(header[6:].strip()).decode().partition(":")[0]
        await self.app(scope, receive, send)


def operator(request: Request) -> str:
    """The signed-in credential's user name."""
    return str(request.state.operator)


def csrf_token(user: str) -> str:
    return hmac.new(_CSRF_KEY, f"csrf|{user}".encode(), hashlib.sha256).hexdigest()


def csrf_ok(user: str, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(token.encode(), csrf_token(user).encode())
