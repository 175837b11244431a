"""The "Sage connections" pages mounted in the Airflow api-server (registered by ``plugins/sage_connect_plugin.py``)."""
