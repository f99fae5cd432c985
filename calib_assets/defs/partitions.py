"""Partitions derived from the study: the grid lives in partitions, the graph stays small."""

from __future__ import annotations

from dataclasses import dataclass

import warnings

import dagster as dg

from calib_assets.study import Study

warnings.filterwarnings("ignore", category=dg.BetaWarning)


@dataclass(frozen=True)
class StudyPartitions:
    models: dg.StaticPartitionsDefinition
    sources: dg.StaticPartitionsDefinition
    calibration: dg.MultiPartitionsDefinition  # model x calib
    compressed: dg.MultiPartitionsDefinition  # variant x calib
    baselines: dg.StaticPartitionsDefinition  # dense and calibration-free variants, once per model
    study: Study

    @classmethod
    def from_study(cls, study: Study) -> "StudyPartitions":
        models = dg.StaticPartitionsDefinition([model.name for model in study.models])
        calibs = dg.StaticPartitionsDefinition(study.calib_keys)
        return cls(
            models=models,
            sources=dg.StaticPartitionsDefinition(study.source_names),
            calibration=dg.MultiPartitionsDefinition({"model": models, "calib": calibs}),
            compressed=dg.MultiPartitionsDefinition(
                {"variant": dg.StaticPartitionsDefinition(study.variant_keys), "calib": calibs}),
            baselines=dg.StaticPartitionsDefinition(study.baseline_keys),
            study=study,
        )

    # -- mappings ----------------------------------------------------------------------------
    def corpus_to_calibration(self) -> dg.PartitionMapping:
        """text_corpus[source] feeds calibration_set[model, calib] for every calib of that source."""
        return dg.StaticPartitionMapping({
            source: [dg.MultiPartitionKey({"model": model.name, "calib": calib})
                     for model in self.study.models for calib in self.study.calib_keys
                     if self.study.parse_calib(calib)[0] == source]
            for source in self.study.source_names
        })

    def model_to_calibration(self) -> dg.PartitionMapping:
        return dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="model")

    def calibration_to_compressed(self) -> dg.PartitionMapping:
        """calibration_set[model, calib] feeds compressed_model[variant, calib] for the model's variants."""
        return dg.MultiPartitionMapping({
            "model": dg.DimensionPartitionMapping("variant", dg.StaticPartitionMapping(self._variants_by_model())),
            "calib": dg.DimensionPartitionMapping("calib", dg.IdentityPartitionMapping()),
        })

    def model_to_compressed(self) -> dg.PartitionMapping:
        return dg.StaticPartitionMapping({
            model: [dg.MultiPartitionKey({"variant": variant, "calib": calib})
                    for variant in variants for calib in self.study.calib_keys]
            for model, variants in self._variants_by_model().items()
        })

    def model_to_baselines(self) -> dg.PartitionMapping:
        return dg.StaticPartitionMapping({
            model.name: [key for key in self.study.baseline_keys if key.startswith(f"{model.name}.")]
            for model in self.study.models
        })

    def _variants_by_model(self) -> dict[str, list[str]]:
        return {model.name: [key for key in self.study.variant_keys if key.startswith(f"{model.name}.")]
                for model in self.study.models}
