"""`AdapterClient`: the registry's operations on a running server, over its adapter API (`/v1/adapters`).

The one HTTP client of that API: `adamix adapters` and `adamix train --push` both use it. It speaks
only HTTP to a server; it imports nothing of the server.
"""
from __future__ import annotations

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
UPLOAD_MEDIA_TYPE = "application/octet-stream"


class ClientError(RuntimeError):
    """The server could not be reached, or answered with an error (`status` 0 when unreachable)."""

    def __init__(self, message: str, status: int = 0, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class AdapterClient:
    """List, upload, activate and delete adapters of the server at `url` with a bearer `api_key`."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout

    def list(self, task: str | None = None) -> dict:
        """Every task the key may see (`{"tasks": [...]}`), or one task's versions and residency."""
        return self._call("GET", "/v1/adapters" + (f"/{task}" if task else ""))

    def upload(self, task: str, data: bytes) -> dict:
        """A new active version of `task` from raw `.safetensors` bytes: {task, version, sha256, created}."""
        return self._call("PUT", f"/v1/adapters/{task}", content=data,
                          headers={"Content-Type": UPLOAD_MEDIA_TYPE})

    def activate(self, task: str, version: str) -> dict:
        return self._call("POST", f"/v1/adapters/{task}/activate", json={"version": version})

    def delete(self, task: str, version: str | None = None) -> dict:
        self._call("DELETE", f"/v1/adapters/{task}" + (f"/versions/{version}" if version else ""))
        return {"deleted": task, "version": version}

    def _call(self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs) -> dict:
        url = self.url + path
        try:
            response = httpx.request(method, url, headers={**self.headers, **(headers or {})}, timeout=self.timeout,
                                     **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"could not reach {url}: {exc}") from None
        if response.status_code >= 400:
            try:
                err = response.json()["error"]
                code, message = err["code"], err["message"]
            except (ValueError, KeyError, TypeError):
                code, message = None, response.text[:500]
            raise ClientError(f"{method} {url} answered {response.status_code}"
                              + (f" {code}" if code else "") + f": {message}", response.status_code, code)
        return {} if response.status_code == 204 else response.json()
