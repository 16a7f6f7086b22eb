"""`sisa serve`: the HTTP app and what it is made of.

`app` builds the FastAPI app and includes one router per audience: `privacy` (deletion requests
and rectifications, their listing, certificates, the versions), `completions` (the applications'
OpenAI-compatible API) and `audit_page` (the auditors' page, rendered by `page`). `auth` turns a
bearer token into its role (a FastAPI dependency), `tokens` keeps the tokens' hashes, `schemas`
holds the request bodies, `model_cache` the current version's ensemble, `worker` the thread that
carries out queued requests, and `context` what the routes of one app share.

`create_app` loads on first use: `sisa token` needs the token store only, not FastAPI, torch and
the forgetting stack behind the app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sisa.service.tokens import ROLES, TokenStore

if TYPE_CHECKING:
    from sisa.service.app import create_app

__all__ = ["ROLES", "TokenStore", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from sisa.service.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
