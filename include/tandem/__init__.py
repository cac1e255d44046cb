"""Tandem: two cadences for a production LLM app.

Knowledge (nightly RAG reindex into pgvector) and behavior (eval-gated LoRA retraining),
run as Airflow 3 DAGs and tracked in MLflow. Everything here works without Airflow too,
through the ``tandem`` CLI.
"""

__version__ = "0.1.0"
