"""sage_sync: one-way sync of Sage Business Cloud Accounting spend into PostgreSQL.

Everything here is plain Python (no Airflow import in the client, the loader or the warehouse
code) so the same logic serves the Airflow DAGs, the CLI, the tests and the benchmarks.
"""
