import pytest

from models.cola_lora import ColaLoraConfig
from models.errors import ConfigError, InputError
from search.flags import apply_space_overrides, validate_space
from spaces.cola_lora import SPACE
from spaces.dims import Choice, Fixed, LogUniform, Uniform


@pytest.mark.parametrize("field, value", [
    ("learning_rate", 0.0), ("learning_rate", -1e-4),
    ("lora_r", 0), ("lora_r", 2.5),
    ("lora_alpha", 0), ("lora_alpha", -8),
    ("lora_dropout", -0.1), ("lora_dropout", 1.0),
    ("batch_size", 0), ("weight_decay", -0.01), ("max_epochs", 0),
    ("stage", "test"), ("target_modules", ()),
])
def test_invalid_field_is_named(field, value):
    with pytest.raises(ConfigError) as e:
        ColaLoraConfig(**{field: value})
    assert e.value.field == field and f"{field}={value!r}" in str(e.value)


def test_valid_defaults_and_from_tune():
    cfg = ColaLoraConfig.from_tune({"learning_rate": 1e-4, "lora_r": 4, "_job": "x",
                                    "target_modules": ["c_attn"]})
    assert cfg.lora_r == 4 and cfg.target_modules == ("c_attn",)
    with pytest.raises(ConfigError, match="lora_rank"):
        ColaLoraConfig.from_tune({"lora_rank": 4})


def test_space_names_are_config_fields():
    assert set(SPACE) <= ColaLoraConfig.field_names()


def test_default_space_is_valid():
    validate_space(SPACE, ColaLoraConfig, {})


def test_space_overrides():
    names = ColaLoraConfig.field_names()
    s = apply_space_overrides(SPACE, ["learning_rate=1e-4:1e-2", "lora_r=4,8",
                                      "lora_dropout=0.05", "weight_decay=0:0.2"], names)
    assert s["learning_rate"] == LogUniform(1e-4, 1e-2)  # keeps its log scale
    assert s["lora_r"] == Choice((4, 8)) and s["lora_dropout"] == Fixed(0.05)
    assert s["weight_decay"] == Uniform(0.0, 0.2)


@pytest.mark.parametrize("override, needle", [
    ("learning_rate=-1e-5:3e-3", "learning_rate lower bound -1e-05"),
    ("learning_rate=0:3e-3", "learning_rate lower bound 0"),
    ("lora_r=0,4", "lora_r=0 is not allowed"),
    ("lora_alpha=0,8", "lora_alpha=0 is not allowed"),
    ("lora_dropout=0:1", "lora_dropout=1"),
    ("lora_rank=4", "'lora_rank' is not a search dimension"),
    ("lora_r", "expected NAME=SPEC"),
    ("weight_decay=0.1:0.01", "must be below"),
])
def test_bad_space_is_named(override, needle):
    with pytest.raises(InputError) as e:
        s = apply_space_overrides(SPACE, [override], ColaLoraConfig.field_names())
        validate_space(s, ColaLoraConfig, {})
    assert needle in str(e.value)
