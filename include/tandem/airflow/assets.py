"""The assets that tie the cadences together (names and URIs fixed in docs/architecture.md)."""

from airflow.sdk import Asset

KNOWLEDGE_INDEX = Asset(name="knowledge_index", uri="tandem://knowledge/index")
BEHAVIOR_ADAPTER = Asset(name="behavior_adapter", uri="tandem://behavior/adapter")
