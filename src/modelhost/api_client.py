"""The command line's client of modelhost's HTTP APIs: errors become one-line messages."""

from __future__ import annotations

import json

import click
import httpx


class ApiClient:
    """Calls `<url><prefix>/<action>` with the caller's token; raises ClickException on errors."""

    def __init__(self, url: str, token: str | None, prefix: str) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60)
        self.prefix = prefix

    def call(self, method: str, action: str, **fields: object) -> dict:
        try:
            if method == "POST":
                response = self._http.post(f"{self.prefix}/{action}", json=fields)
            else:
                params = {k: v for k, v in fields.items() if v is not None}
                response = self._http.get(f"{self.prefix}/{action}", params=params)
        except httpx.TransportError as e:
            raise click.ClickException(
                f"modelhost at {self._http.base_url} did not answer ({e}). Is `modelhost up` "
                "running? Point at it with --url or MODELHOST_URL."
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text}
        if response.is_error:
            raise click.ClickException(self.explain(response.status_code, body))
        return body

    def explain(self, status: int, body: dict) -> str:
        """What an error answer tells the person at the command line."""
        return str(body.get("message", body))

    @property
    def base_url(self) -> str:
        return str(self._http.base_url)


def show(value: object) -> None:
    click.echo(json.dumps(value, indent=2))
