"""Re-evaluation on a schedule, and declarative automation that keeps the findings up to date."""

from __future__ import annotations

import dagster as dg

REEVALUATION_CRON = "0 3 * * 1"  # Mondays 03:00: a changed evaluation suite reaches every result weekly

# eval_results, the dbt marts and the report follow their parents when a parent's data changed (its data version:
# the artifact's content hash) or the parent is being rebuilt in the same tick; Dagster's eager() would follow every
# new materialization, so a re-run that reused its artifacts (same data version) rebuilt all the findings.
FINDINGS_CONDITION = (
    dg.AutomationCondition.in_latest_time_window()
    & (dg.AutomationCondition.newly_missing()
       | dg.AutomationCondition.any_deps_match(
           dg.AutomationCondition.data_version_changed() | dg.AutomationCondition.will_be_requested())
       ).since_last_handled()
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("eager_on_data_change")


def reevaluation_schedule(name: str, job: dg.UnresolvedAssetJobDefinition, upstream: str) -> dg.ScheduleDefinition:
    """Re-run `job` for every partition whose `upstream` checkpoint exists. Unchanged inputs are reused,
    so a tick only recomputes evaluations whose suite, data or code changed."""

    @dg.schedule(name=name, cron_schedule=REEVALUATION_CRON, job=job,
                 description=f"Weekly re-evaluation of every materialized {upstream} partition.")
    def _schedule(context: dg.ScheduleEvaluationContext):
        partitions = sorted(context.instance.get_materialized_partitions(dg.AssetKey(upstream)))
        if not partitions:
            return dg.SkipReason(f"no {upstream} partition is materialized yet")
        tick = context.scheduled_execution_time.isoformat()
        return [dg.RunRequest(partition_key=key, run_key=f"{tick}|{key}") for key in partitions]

    return _schedule


def automation_sensor() -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "findings_automation", target=dg.AssetSelection.all(), default_status=dg.DefaultSensorStatus.RUNNING,
        description="Materializes eval_results and the dbt marts whenever an evaluation changes.")
