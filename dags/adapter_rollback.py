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
        from airflow.sdk.exceptions import AirflowSkipException

        from tandem.adapters import registry
        from tandem.airflow.settings import task_settings

        settings = task_settings()
        actor = f"adapter_rollback {context['run_id']}"
        if params["version"]:
            out = registry.promote(settings, params["version"], reason=params["reason"], actor=actor)
            action = "promote"
        else:
            out = registry.rollback(settings, reason=params["reason"], actor=actor)
            action = "rollback"
        if not out["changed"]:
            raise AirflowSkipException(f"version {out['champion']} is already champion")  # no asset event
        context["outlet_events"][BEHAVIOR_ADAPTER].extra = {"action": action, "champion": out["champion"] or "base",
                                                            "previous": out.get("previous") or ""}
        return out

    move_champion()


adapter_rollback()
