"""The behavior cadence's adapters: RAFT dataset, LoRA training, three-way evaluation, the MLflow
registry of ``tandem-adapter`` versions, and the promotion gate.

One module per concern:

- ``params``   the retrain parameters (types, bounds, descriptions) shared by the DAG form and the CLI;
- ``dataset``  the RAFT dataset (oracle + distractor chunks, refusal rows, deterministic split);
- ``train``    peft LoRA training on the chat template, loss on the assistant target only;
- ``compare``  the three-way evaluation (candidate, champion, base) with the behavior_eval scorers;
- ``card``     the model card used as the version description;
- ``registry`` versions, aliases (champion / challenger / previous), resolve and download, rollback;
- ``gate``     the promotion decision;
- ``events``   the ``behavior_adapter`` asset event from outside Airflow (CLI);
- ``retrain``  the pipeline steps the DAG and ``tandem adapters retrain`` run.

Importing this package is cheap: heavy libraries are imported inside the functions that need them.
"""
