"""The local stack (no Docker): embedded Postgres, MLflow server, Airflow components."""
