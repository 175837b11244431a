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
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": app, "url_prefix": "/sage", "name": "Sage connections"}]
    # No leading slash: the UI resolves the link against its base URL, so a sub-path base_url works.
    external_views: ClassVar[list[dict[str, Any]]] = [
        {"name": "Sage connections", "href": "sage/", "destination": "nav", "category": "admin"}]


__all__ = ["SageConnectPlugin", "app"]
