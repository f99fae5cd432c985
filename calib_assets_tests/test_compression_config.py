"""Method configs: validation errors name the bad value, labels are partition-key safe."""

import re

import pytest

from calib_assets.compression import (
    COMPRESSORS,
    LAYER_COMPRESSORS,
    METHODS,
    GPTQConfig,
    MagnitudeConfig,
    RTNConfig,
    WandaConfig,
    check_layer_compatible,
    make_method_config,
)


@pytest.mark.parametrize(
    "config, label",
    [
        (GPTQConfig(bits=3, group_size=64), "gptq-w3g64"),
        (RTNConfig(bits=3, group_size=64), "rtn-w3g64"),
        (RTNConfig(bits=4, group_size=None), "rtn-w4"),
        (RTNConfig(bits=4, group_size=64, symmetric=True), "rtn-w4g64-sym"),
        (WandaConfig(n=2, m=4), "wanda-2of4"),
        (MagnitudeConfig(sparsity=0.5), "magnitude-50pct"),
        (MagnitudeConfig(sparsity=0.625), "magnitude-62p5pct"),
        (GPTQConfig(percdamp=0.1), "gptq-w4g128-damp0p1"),
    ],
)
def test_labels(config, label):
    assert config.label() == label
    assert re.fullmatch(r"[a-z0-9-]+", config.label())


def test_method_names_and_calibration_flags():
    assert {name: cls.method for name, cls in METHODS.items()} == {n: n for n in METHODS}
    assert not RTNConfig.needs_calibration and not MagnitudeConfig.needs_calibration
    assert WandaConfig.needs_calibration and GPTQConfig.needs_calibration


def test_make_method_config_round_trips_to_dict():
    config = make_method_config("gptq", {"bits": 3, "group_size": 64})
    assert config == GPTQConfig(bits=3, group_size=64)
    params = config.to_dict()
    assert params == {"method": "gptq", "bits": 3, "group_size": 64, "symmetric": False,
                      "percdamp": 0.01, "blocksize": 128, "act_order": False, "static_groups": False,
                      "true_sequential": False}
    assert make_method_config("gptq", params) == config
    with pytest.raises(ValueError, match="'rtn'"):
        make_method_config("gptq", {**params, "method": "rtn"})


@pytest.mark.parametrize(
    "method, params, needle",
    [
        ("gptq", {"bits": 9}, "bits=9"),
        ("rtn", {"bits": 1}, "bits=1"),
        ("rtn", {"bits": 4.0}, "4.0"),
        ("gptq", {"group_size": 0}, "group_size=0"),
        ("magnitude", {"sparsity": 1.0}, "sparsity=1.0"),
        ("wanda", {"n": 4, "m": 4}, "n=4, m=4"),
        ("wanda", {"sparsity": 0.5, "n": 2, "m": 4}, "not both"),
        ("magnitude", {}, "either"),
    ],
)
def test_invalid_values_are_named(method, params, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        make_method_config(method, params)


def test_unknown_method_lists_allowed_names():
    with pytest.raises(ValueError, match="'obc'") as error:
        make_method_config("obc", {})
    assert all(name in str(error.value) for name in ("gptq", "sparsegpt", "wanda", "rtn", "magnitude"))


def test_unknown_parameter_lists_allowed_names():
    with pytest.raises(ValueError, match="groupsize") as error:
        make_method_config("gptq", {"groupsize": 128})
    assert "group_size" in str(error.value)


def test_layer_compatibility_names_layer_and_sizes():
    check_layer_compatible(GPTQConfig(group_size=64), "model.layers.0.mlp.down_proj", 128)
    with pytest.raises(ValueError, match=r"mlp\.down_proj.*group_size=48.*in_features=128"):
        check_layer_compatible(GPTQConfig(group_size=48), "model.layers.0.mlp.down_proj", 128)
    with pytest.raises(ValueError, match=r"q_proj.*m=3.*in_features=64"):
        check_layer_compatible(WandaConfig(n=1, m=3), "model.layers.0.self_attn.q_proj", 64)
    check_layer_compatible(RTNConfig(group_size=None), "x", 7)
    check_layer_compatible(MagnitudeConfig(sparsity=0.3), "x", 7)


def test_every_method_is_registered_with_its_layer_compressor():
    """The engine finds each method's layer compressor in its registry (no per-method branches)."""
    from calib_assets.compression.awq import compress_layer_awq
    from calib_assets.compression.engine import compress_layer

    assert set(LAYER_COMPRESSORS) == set(METHODS)
    assert LAYER_COMPRESSORS["awq"] is compress_layer_awq
    assert {method for method, fn in LAYER_COMPRESSORS.items() if fn is compress_layer} == set(COMPRESSORS)
    for method, compressor in COMPRESSORS.items():
        assert METHODS[method].method == method and callable(compressor)
