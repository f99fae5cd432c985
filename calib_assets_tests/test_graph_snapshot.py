import json
import os
from pathlib import Path

import pytest

from calib_assets.defs import build_definitions
from calib_assets.study import load_study
from calib_assets_tests.graph_snapshot import graph_snapshot

SNAPSHOTS = Path(__file__).parent / "snapshots"


@pytest.mark.parametrize("study_name", ["ci", "default"])
def test_the_whole_graph_matches_its_reviewed_snapshot(study_name, tmp_path):
    snapshot = graph_snapshot(build_definitions(load_study(study_name), root=str(tmp_path)))
    path = SNAPSHOTS / f"graph_{study_name}.json"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        path.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
    expected = json.loads(path.read_text())
    assert snapshot == expected, f"the asset graph changed: review the diff, then `make snapshots` ({path})"


def test_each_checkpoint_partition_depends_on_exactly_one_calibration_set(tmp_path):
    """The lineage promise of DESIGN.md, checked on the graph itself rather than on the snapshot."""
    import dagster as dg

    study = load_study("default")
    defs = build_definitions(study, root=str(tmp_path))
    graph = defs.resolve_asset_graph()
    compressed, calibration = dg.AssetKey("compressed_model"), dg.AssetKey("calibration_set")
    mapping = graph.get_partition_mapping(compressed, calibration)
    for variant in study.variant_keys:
        for calib in study.calib_keys:
            key = dg.MultiPartitionKey({"variant": variant, "calib": calib})
            upstream = mapping.get_upstream_mapped_partitions_result_for_partitions(
                graph.get(compressed).partitions_def.subset_with_partition_keys([key]),
                graph.get(compressed).partitions_def, graph.get(calibration).partitions_def)
            keys = list(upstream.partitions_subset.get_partition_keys())
            model = study.parse_variant(variant)[0].name
            assert keys == [dg.MultiPartitionKey({"model": model, "calib": calib})]


@pytest.mark.parametrize("study_name", ["ci", "default"])
def test_every_asset_name_fits_a_zoomed_out_graph_node(study_name):
    """The global graph cuts names over 16 characters in the middle (README, "The asset graph"); the browser
    test sees the nodes themselves, this one names the offender without a browser."""
    snapshot = json.loads((SNAPSHOTS / f"graph_{study_name}.json").read_text())
    assert [name for name in snapshot["assets"] if len(name) > 16] == []
