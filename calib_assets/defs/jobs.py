"""Jobs: one per partitions definition (so each can be backfilled from the UI), in dependency order."""

from __future__ import annotations

import dagster as dg

from calib_assets.defs.partitions import StudyPartitions

DBT = "dbt"  # stands for every dbt model in a stage


def stages(parts: StudyPartitions) -> list[tuple[str, list[str], dg.PartitionsDefinition | None]]:
    """(job name, asset names, partitions) in the order a whole study is run."""
    return [
        ("prepare_models", ["base_model"], parts.models),
        ("prepare_corpora", ["text_corpus"], parts.corpora),
        ("tokenize_pools", ["calibration_pool"], parts.pools),
        ("build_calibration_sets", ["calibration_set", "calib_inspection"], parts.calibration),
        ("build_tasks", ["offline_tasks"], None),
        ("baselines", ["baseline_model", "baseline_eval"], parts.baselines),
        ("compress_and_evaluate", ["compressed_model", "evaluation"], parts.compressed),
        ("findings", ["set_descriptors", "eval_results", DBT, "findings_report"], None),
    ]


REEVALUATION = (  # (job, asset, partitions attribute, the checkpoint asset it re-evaluates)
    ("reevaluate_checkpoints", "evaluation", "compressed", "compressed_model"),
    ("reevaluate_baselines", "baseline_eval", "baselines", "baseline_model"),
)


def build_reevaluation(parts: StudyPartitions) -> tuple[list, list]:
    """Jobs that re-run only the evaluations, and their weekly schedules."""
    from calib_assets.defs.automation import reevaluation_schedule

    jobs, schedules = [], []
    for name, asset, partitions, upstream in REEVALUATION:
        job = dg.define_asset_job(name, selection=dg.AssetSelection.assets(asset),
                                  partitions_def=getattr(parts, partitions),
                                  description=f"Re-evaluate existing {upstream} partitions.")
        jobs.append(job)
        schedules.append(reevaluation_schedule(f"weekly_{name}", job, upstream))
    return jobs, schedules


def build_jobs(parts: StudyPartitions, dbt_assets_def: dg.AssetsDefinition) -> list:
    jobs = []
    for name, assets, partitions_def in stages(parts):
        selection: dg.AssetSelection = dg.AssetSelection.assets(*[a for a in assets if a != DBT])
        if DBT in assets:
            selection |= dg.AssetSelection.assets(dbt_assets_def)
        jobs.append(dg.define_asset_job(name, selection=selection, partitions_def=partitions_def,
                                        description=f"Materialize {', '.join(assets)} for the chosen partitions."))
    return jobs
