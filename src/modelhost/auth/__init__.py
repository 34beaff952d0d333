"""Who may call what: identities, tokens and grants on registered models, checked at the gateway.

`ACTOR` is the ASGI scope key under which the authenticated caller's name reaches the gateway,
for audit events.
"""

from __future__ import annotations

ACTOR = "modelhost.actor"
