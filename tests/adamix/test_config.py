"""AdaMixConfig: the paper's defaults, every invalid value refused by field name, strict from_dict."""
import dataclasses
import json
import math

import pytest

from adamix import AdaMixConfig


def test_defaults_are_the_papers():
    c = AdaMixConfig()
    assert (c.kind, c.num_experts, c.bottleneck, c.share_up, c.share_down, c.placement) == \
        ("adapter", 4, 16, True, False, "ffn")
    assert (c.lora_r, c.lora_alpha, c.lora_dropout, c.lora_targets, c.lora_share_b) == \
        (4, 32.0, 0.1, ("query", "value"), True)
    assert (c.consistency_weight, c.init_std) == (1.0, 0.02)
    assert c.lora_scaling == 8.0


def test_every_field_is_documented():
    for f in dataclasses.fields(AdaMixConfig):
        assert f.metadata.get("help"), f"AdaMixConfig.{f.name} has no help text"


INVALID = [
    ("kind", "prefix"), ("kind", None),
    ("num_experts", 0), ("num_experts", -1), ("num_experts", 2.0), ("num_experts", True), ("num_experts", 65),
    ("bottleneck", 0), ("bottleneck", "16"), ("bottleneck", 4097),
    ("share_up", "yes"), ("share_up", 1), ("share_down", None), ("lora_share_b", 0),
    ("placement", "ffn_out"), ("placement", "FFN"),
    ("lora_r", 0), ("lora_r", 1025), ("lora_r", 4.5),
    ("lora_alpha", 0), ("lora_alpha", -1.0), ("lora_alpha", math.nan), ("lora_alpha", math.inf), ("lora_alpha", True),
    ("lora_alpha", "32"),
    ("lora_dropout", -0.1), ("lora_dropout", 1.0), ("lora_dropout", math.nan),
    ("lora_targets", ()), ("lora_targets", ("query", "query")), ("lora_targets", ("q",)),
    ("lora_targets", ("output",)),
    ("consistency_weight", -1.0), ("consistency_weight", math.nan), ("consistency_weight", math.inf),
    ("init_std", 0.0), ("init_std", 1.5), ("init_std", math.nan),
    ("seed", -1), ("seed", 1.5), ("seed", True),
]


@pytest.mark.parametrize("field, value", INVALID, ids=[f"{f}={v!r}" for f, v in INVALID])
def test_invalid_value_is_refused_with_field_and_value(field, value):
    with pytest.raises(ValueError) as info:
        AdaMixConfig(**{field: value})
    assert f"AdaMixConfig.{field}" in str(info.value)
    assert repr(tuple(value) if isinstance(value, tuple) else value) in str(info.value)


@pytest.mark.parametrize("kwargs", [
    {}, {"kind": "lora", "num_experts": 8, "lora_targets": ["value", "query"], "lora_alpha": 16},
    {"num_experts": 1, "share_up": False, "share_down": True, "placement": "both", "seed": 7},
], ids=["default", "lora", "adapter-variant"])
def test_dict_round_trip_through_json(kwargs):
    config = AdaMixConfig(**kwargs)
    again = AdaMixConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert isinstance(again.lora_targets, tuple)


def test_from_dict_refuses_unknown_fields_by_name():
    data = AdaMixConfig().to_dict() | {"num_expert": 4, "gate": "softmax"}
    with pytest.raises(ValueError, match=r"no field\(s\) \['gate', 'num_expert'\]"):
        AdaMixConfig.from_dict(data)


def test_from_dict_refuses_a_non_dict():
    with pytest.raises(ValueError, match="from a dict, got list"):
        AdaMixConfig.from_dict([("kind", "lora")])


def test_from_dict_validates_values():
    with pytest.raises(ValueError, match="AdaMixConfig.num_experts"):
        AdaMixConfig.from_dict({"num_experts": 0})
