"""Serve trioflow over MCP (Model Context Protocol): ``pip install 'trioflow[mcp]'``.

:func:`create_server` builds an MCP server (the official SDK's low-level server) that serves
a :class:`~trioflow.lifecycle.ToolRegistry`'s tools with their own schemas, ``run_tools``
batches of them, and workflow files (``run_workflow``, ``get_run``, ``list_runs``); every call
goes through one coordinator's admission. :func:`serve_stdio` and :func:`serve_http` run it.
The ``trioflow serve`` command does all three from the shell.
"""

from __future__ import annotations

import contextlib

from ._server import BUILT_IN_TOOLS as BUILT_IN_TOOLS
from ._server import create_server as create_server
from ._transports import serve_http as serve_http
from ._transports import serve_stdio as serve_stdio

__all__ = ("BUILT_IN_TOOLS", "create_server", "serve_http", "serve_stdio")


def _fix_module_names() -> None:
    # Public objects report their public path (trioflow.mcp.X), not the private module.
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("trioflow.mcp._"):
            with contextlib.suppress(AttributeError, TypeError):
                obj.__module__ = "trioflow.mcp"


_fix_module_names()
del _fix_module_names
