"""Airflow glue shared by the thin DAG files in dags/: assets, default args, settings inside a task.

Importing this package is cheap (no DB, no models): DAG files import it at parse time.
"""
