"""A cap on JSON request bodies: FastAPI reads a JSON body whole into memory, so every route but
the streaming upload gets at most MAX_JSON_BODY_BYTES (413 past it, with or without Content-Length)."""

from __future__ import annotations

import json

MAX_JSON_BODY_BYTES = 1024 * 1024
UNCAPPED_PATHS = ("/v1/files",)  # uploads stream to disk under KD_MAX_UPLOAD_BYTES instead


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int = MAX_JSON_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE") \
                or scope["path"] in UNCAPPED_PATHS:
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, send)
        # Read the body here (it is at most max_bytes) so an oversize one is refused before the app
        # sees any of it; then replay it to the app.
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                return await self._reject(scope, send)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope, send):
        body = json.dumps({"type": "urn:kd:problem:too-large", "title": "Content Too Large", "status": 413,
                           "detail": f"the request body is larger than {self.max_bytes} bytes",
                           "instance": scope["path"]}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/problem+json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
