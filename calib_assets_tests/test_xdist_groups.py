"""`make test` runs under `--dist loadgroup`: the tests of one xdist_group share one worker, so that a
module's or the session's expensive fixture (a materialized study, a Ray cluster, a Postgres server, dagster
dev) is built once. pytest-xdist does that by tagging each grouped test's nodeid with its group; pytest 9.2
stopped that tag from taking effect, which silently split the groups and built those fixtures twice."""

import pytest

GROUP = "xdist-groups-check"


@pytest.mark.xdist_group(GROUP)
@pytest.mark.parametrize("member", [1, 2])
def test_a_grouped_test_carries_its_group_under_loadgroup(request, member):
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not a worker of `pytest -n N --dist loadgroup`")
    assert request.node.nodeid.endswith(f"@{GROUP}"), request.node.nodeid
