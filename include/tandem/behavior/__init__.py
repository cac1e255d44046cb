"""The behavior cadence: a versioned behavior spec, an eval set, deterministic scorers, a diagnosis of every
failure (knowledge vs behavior vs model capability) and a decision with anti-flap that retrains only when
behavior is at fault.

Modules, one concern each: ``spec`` (the YAML spec), ``evalset`` (JSONL examples), ``metrics`` (metric names
and groups), ``prompt`` (chat messages and training targets), ``generate`` (batched greedy generation),
``scoring`` (per-output verdicts), ``diagnosis`` (failure classes), ``evaluate`` (score a set of items),
``antiflap`` (retrain history from MLflow), ``decision`` (what to do), ``eval_run`` (the tracked eval the DAG
and the CLI run), ``report`` (the scorecard text).

Importing this package is cheap: torch, transformers and mlflow load inside the functions that need them.
"""
