import json

import pytest

from shoal.config import PRESETS_DIR, config_from_dict, load_config
from shoal.errors import ConfigError


def test_presets_load_and_validate():
    names = {p.stem for p in PRESETS_DIR.glob("*.toml")}
    assert {"tiny", "tiny-moe", "gpt2-124m", "gpt2-124m-moe"} <= names
    for name in names:
        cfg = load_config(name)
        assert cfg.preset == name
    gpt2 = load_config("gpt2-124m")
    assert (gpt2.model.d_model, gpt2.model.n_layers, gpt2.model.n_heads) == (768, 12, 12)


def test_overrides_are_typed():
    cfg = load_config("tiny", ["train.lr=3e-4", "train.steps=10", "train.warmup_steps=2", "model.tie_embeddings=false",
                               'data.sources=["a", "b"]', "train.schedule=wsd", "train.dtype=fp32"])
    assert cfg.train.lr == 3e-4 and cfg.train.steps == 10 and cfg.model.tie_embeddings is False
    assert cfg.data.sources == ["a", "b"] and cfg.train.schedule == "wsd" and cfg.train.dtype == "fp32"
    cfg = load_config("tiny", ["train.lr=1"])  # an int where a float is expected is fine
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


@pytest.mark.parametrize("override, words", [
    ("train.lrr=1e-3", ["unknown config key 'train.lrr'", "allowed in [train]", "lr"]),
    ("trian.lr=1e-3", ["unknown config key 'trian.lr'", "sections"]),
    ("train.steps=ten", ["train.steps", "must be int"]),
    ("train.steps=1.5", ["train.steps", "must be int"]),
    ("model.tie_embeddings=1", ["model.tie_embeddings", "must be bool"]),
    ("model.n_heads=5", ["model.n_heads", "must divide model.d_model"]),
    ("model.n_kv_heads=3", ["model.n_kv_heads", "must divide model.n_heads"]),
    ("model.head_dim=15", ["head size is 15", "even"]),
    ("train.qat=int2", ["train.qat", "int4-wo"]),
    ("train.seq_len=512", ["train.seq_len", "model.max_seq_len"]),
    ("train.batch_tokens=1000", ["train.batch_tokens", "multiple"]),
    ("train.schedule=linear", ["train.schedule", "cosine, wsd or constant"]),
    ("train.steps=0", ["train.steps", "positive"]),
    ("data.val_fraction=0.7", ["data.val_fraction"]),
    ("train.lr", ["section.key=value"]),
])
def test_bad_values_name_the_key(override, words):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_moe_table_and_overrides():
    cfg = load_config("tiny-moe", ["model.moe.top_k=1", 'model.moe.score_func="sigmoid"', "parallel.ep=4"])
    assert (cfg.model.moe.n_experts, cfg.model.moe.top_k, cfg.model.moe.score_func) == (8, 1, "sigmoid")
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))).model.moe == cfg.model.moe
    assert load_config("tiny").model.moe.n_experts == 0  # dense unless asked


@pytest.mark.parametrize("override, words", [
    ("model.moe.top_k=9", ["model.moe.top_k", "between 1 and model.moe.n_experts (8)"]),
    ("model.moe.every=5", ["model.moe.every", "model.n_layers (4)"]),
    ('model.moe.score_func="relu"', ["model.moe.score_func", "softmax or sigmoid"]),
    ("model.moe.capacity_factor=-1", ["model.moe.capacity_factor", ">= 0"]),
    ("model.moe.n_expert=4", ["unknown config key 'model.moe.n_expert'", "allowed in [model.moe]", "n_experts"]),
    ("model.moe=4", ["model.moe", "is a table"]),
    ("model.d_model.x=4", ["'model.d_model' is not a table"]),
    ("parallel.ep=3", ["parallel.ep", "must divide model.moe.n_experts (8)"]),
    ("parallel.tp=2", ["parallel.tp", "MoE", "parallel.ep"]),
])
def test_bad_moe_values_name_the_key(override, words):
    with pytest.raises(ConfigError) as err:
        load_config("tiny-moe", [override])
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value)
    with pytest.raises(ConfigError, match="model.moe.n_experts is 0"):
        load_config("tiny", ["parallel.ep=2"])
    with pytest.raises(ConfigError, match="'model.moe.capacity_factor' must be 0 .dropless. with parallel.ep > 1"):
        load_config("tiny-moe", ["parallel.ep=2", "model.moe.capacity_factor=1.25"])
    with pytest.raises(ConfigError, match="'parallel.activation_checkpoint' must be none or block with parallel.ep > 1"):
        load_config("tiny-moe", ["parallel.ep=2", 'parallel.activation_checkpoint="selective"'])


def test_unknown_preset_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*tiny"):
        load_config("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nd_model = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(bad))
    extra = tmp_path / "extra.toml"
    extra.write_text("[optimizer]\nlr = 1\n")
    with pytest.raises(ConfigError, match=r"unknown config section '\[optimizer\]'"):
        load_config(str(extra))


def test_round_trip_through_json():
    cfg = load_config("tiny", ["train.lr=1e-3"])
    again = config_from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
