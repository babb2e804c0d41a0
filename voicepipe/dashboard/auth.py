"""HTTP basic authentication for every request, pages and /api alike (VOICEPIPE_DASHBOARD_AUTH),
checked by the exporter's own functions: one rule for every credential variable."""

from __future__ import annotations

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

AUTH_VARIABLE = "VOICEPIPE_DASHBOARD_AUTH"
REALM = "voicepipe dashboard"


class BasicAuth:
    """Refuses every request without valid credentials (401 with a Basic challenge)."""

    def __init__(self, app: ASGIApp, credentials: list[tuple[str, str]]) -> None:
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from voicepipe.observability.exporter import authorized

        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            if not authorized(headers.get("authorization"), self.credentials):
                response = PlainTextResponse(
                    "authentication required\n", status_code=401,
                    headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
