"""
### adapter_rollback: put the previous adapter back, or make a chosen version champion

- `version` empty: **rollback**: `previous` becomes `champion` again (one step back in the champion
  history; the rolled-back version is tagged `tandem.rolled_back_at`).
- `version` set (a number, or `base` for no adapter): that version becomes `champion`, the current one
  becomes `previous`.

Emits the asset `behavior_adapter` when the champion changed. The same operations from a shell:
`tandem adapters rollback`, `tandem adapters promote VERSION`.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from tandem.airflow.assets import BEHAVIOR_ADAPTER
from tandem.airflow.defaults import DEFAULT_ARGS, START_DATE, TAG


@dag(
    dag_id="adapter_rollback",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[TAG, "behavior"],
    params={
        "version": Param("", type="string", pattern=r"^(|base|[0-9]{1,9})$",
                         description="Version to make champion ('base': no adapter). Empty: roll back to `previous`."),
        "reason": Param("rollback from Airflow", type="string", minLength=1, maxLength=500,
                        description="Recorded as a tag on the versions involved."),
    },
    doc_md=__doc__,
)
def adapter_rollback():
    @task(outlets=[BEHAVIOR_ADAPTER])
    def move_champion(params=None, **context):
        from tandem.adapters import tasks

        return tasks.move_champion(dict(params), context["run_id"], context["outlet_events"], BEHAVIOR_ADAPTER)

    move_champion()


adapter_rollback()
