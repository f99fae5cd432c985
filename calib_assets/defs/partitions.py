"""Partitions derived from the study: the grid lives in partitions, the graph stays small."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import dagster as dg

from calib_assets.study import Study

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)  # partitioned asset checks


@dataclass(frozen=True)
class StudyPartitions:
    models: dg.StaticPartitionsDefinition
    sources: dg.StaticPartitionsDefinition  # calibration sources
    corpora: dg.StaticPartitionsDefinition  # calibration sources and evaluation-only datasets
    pools: dg.MultiPartitionsDefinition  # model x source
    calibration: dg.MultiPartitionsDefinition  # model x calib
    compressed: dg.MultiPartitionsDefinition  # variant x calib
    baselines: dg.StaticPartitionsDefinition  # dense and calibration-free variants, once per model
    study: Study

    @classmethod
    def from_study(cls, study: Study) -> StudyPartitions:
        models = dg.StaticPartitionsDefinition([model.name for model in study.models])
        calibs = dg.StaticPartitionsDefinition(study.calib_keys)
        sources = dg.StaticPartitionsDefinition(study.source_names)
        return cls(
            models=models,
            sources=sources,
            corpora=dg.StaticPartitionsDefinition(study.corpus_names),
            pools=dg.MultiPartitionsDefinition({"model": models, "source": sources}),
            calibration=dg.MultiPartitionsDefinition({"model": models, "calib": calibs}),
            compressed=dg.MultiPartitionsDefinition(
                {"variant": dg.StaticPartitionsDefinition(study.variant_keys), "calib": calibs}),
            baselines=dg.StaticPartitionsDefinition(study.baseline_keys),
            study=study,
        )

    # -- mappings (Dagster maps a single dimension to a multi-partitioned asset only one-to-one, so the
    # source -> calibration set fan-out happens between the two multi-partitioned pool and set assets)
    def to_pool(self, dimension: str) -> dg.PartitionMapping:
        """base_model[model] or text_corpus[source] feeds calibration_pool[model, source]."""
        return dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name=dimension)

    def pool_to_calibration(self) -> dg.PartitionMapping:
        """calibration_pool[model, source] feeds calibration_set[model, calib] for each calib of the source."""
        calibs_by_source = {source: [calib for calib in self.study.calib_keys
                                     if self.study.parse_calib(calib)[0] == source]
                            for source in self.study.source_names}
        return dg.MultiPartitionMapping({
            "model": dg.DimensionPartitionMapping("model", dg.IdentityPartitionMapping()),
            "source": dg.DimensionPartitionMapping("calib", dg.StaticPartitionMapping(calibs_by_source)),
        })

    def calibration_to_compressed(self) -> dg.PartitionMapping:
        """calibration_set[model, calib] feeds compressed_model[variant, calib] for the model's variants."""
        variants_by_model = {model.name: [key for key in self.study.variant_keys if key.startswith(f"{model.name}.")]
                             for model in self.study.models}
        return dg.MultiPartitionMapping({
            "model": dg.DimensionPartitionMapping("variant", dg.StaticPartitionMapping(variants_by_model)),
            "calib": dg.DimensionPartitionMapping("calib", dg.IdentityPartitionMapping()),
        })

    def model_to_baselines(self) -> dg.PartitionMapping:
        return dg.StaticPartitionMapping({
            model.name: [key for key in self.study.baseline_keys if key.startswith(f"{model.name}.")]
            for model in self.study.models
        })
