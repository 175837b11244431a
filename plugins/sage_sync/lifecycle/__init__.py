"""The use cases the CLI and the Connect pages share, and the one Airflow adapter (``airflow_api``)."""
