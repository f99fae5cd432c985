"""The findings automation on the materialized CI study: a re-run of an unchanged evaluation (its artifact
reused, the same data version) requests nothing downstream; an evaluation whose data changed requests
eval_results and everything below it, in one tick."""

import dagster as dg
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("pipeline")]


def _requested(defs, instance, cursor):
    """(the assets the findings automation would request in this tick, the cursor for the next one)."""
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    return {r.key.to_user_string() for r in result.results if r.true_subset.size}, result.cursor


def test_an_unchanged_evaluation_rerun_requests_nothing_and_a_changed_one_the_findings(materialized):
    study, defs, _, instance, _ = materialized
    partition = dg.MultiPartitionKey({"variant": study.variant_keys[0], "calib": study.calib_keys[0]})
    requested, cursor = _requested(defs, instance, None)  # the first tick: everything is materialized
    assert requested == set()
    job = defs.resolve_job_def("compress_and_evaluate")
    rerun = job.execute_in_process(instance=instance, partition_key=partition)
    reused = [event.materialization.metadata["reused"].value for event in rerun.get_asset_materialization_events()]
    assert rerun.success and reused and all(reused)
    requested, cursor = _requested(defs, instance, cursor)
    assert requested == set()  # eager() would rebuild eval_results, every mart and the report here

    instance.report_runless_asset_event(dg.AssetMaterialization(
        "evaluation", partition=str(partition), tags={"dagster/data_version": "changed"}))
    requested, _ = _requested(defs, instance, cursor)
    downstream = {key.to_user_string() for key in defs.resolve_asset_graph().get(
        dg.AssetKey("evaluation")).child_keys}
    assert "eval_results" in requested and downstream <= requested
    assert "findings_report" in requested and {"evaluation", "compressed_model"}.isdisjoint(requested)
