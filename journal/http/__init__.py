"""``journal serve``: the journal over HTTP, with aiOS's routes and Server-Sent Events.

:func:`create_app` builds the ASGI application (a factory: ``uvicorn --factory
journal.http:create_app``); :func:`add_serve_arguments` and :func:`run_serve` are the
``journal serve`` command. Needs the ``http`` extra (``pip install 'journal[http]'``); this
module itself imports none of it, so the CLI works without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from journal.http._command import add_serve_arguments, run_serve

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["add_serve_arguments", "create_app", "run_serve"]


def create_app(*args: Any, **kwargs: Any) -> Starlette:
    """See :func:`journal.http._app.create_app`."""
    from journal.http._app import create_app as make

    return make(*args, **kwargs)
