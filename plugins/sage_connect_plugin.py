"""Airflow plugin registration of the "Sage connections" pages (``sage_sync.web.app``).

Airflow finds plugins only in files directly under ``plugins/``, so this file stays here; the
pages themselves live in the ``sage_sync.web`` layer.
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

from sage_sync.web.app import app


class SageConnectPlugin(AirflowPlugin):
    """Mounts the Sage connections pages at /sage and links them from Airflow's navigation."""

    name = "sage_connect"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [{"app": app, "url_prefix": "/sage", "name": "Sage connections"}]
    # A top-level entry of Airflow's navigation. With ``url_route`` Airflow 3 shows the page inside
    # its own UI (at /plugin/sage-connections, in a frame under Airflow's menu) instead of leaving it.
    # No leading slash: the UI resolves the links against its base URL, so a sub-path base_url works.
    # "Sage": Airflow's navigation cuts a longer label ("Sage con..."); the page's title says the rest.
    external_views: ClassVar[list[dict[str, Any]]] = [
        {
            "name": "Sage",
            "href": "sage/",
            "destination": "nav",
            "url_route": "sage-connections",
            "nav_top_level": True,
            "icon": "sage/icon.svg",
        }
    ]


__all__ = ["SageConnectPlugin"]
