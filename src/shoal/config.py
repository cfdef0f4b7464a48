"""Typed configs: TOML presets, `--set a.b=c` overrides and validation with one-line errors."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from shoal.errors import ConfigError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

def _presets_dir() -> Path:
    """Presets ship inside the wheel; in a source checkout they live in the repo's configs/."""
    packaged = Path(__file__).resolve().parent / "configs"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "configs"


PRESETS_DIR = _presets_dir()
DEFAULT_PRESET = "tiny"


@dataclass
class MoEConfig:
    """Mixture-of-experts feed-forward layers (`[model.moe]`); n_experts = 0 keeps every layer dense."""
    n_experts: int = 0  # routed SwiGLU experts per MoE layer
    top_k: int = 2  # experts each token is sent to
    shared_experts: int = 0  # experts every token goes through as well (DeepSeek-style), merged into one MLP
    every: int = 1  # MoE in layers every-1, 2*every-1, ...; the others stay dense
    d_ff: int = 0  # hidden size of each expert; 0: model.d_ff
    score_func: str = "softmax"  # softmax | sigmoid: router scores before the top-k
    aux_loss_coef: float = 0.01  # Switch/GShard load-balancing loss weight; 0: off
    z_loss_coef: float = 0.001  # router z-loss weight (keeps router logits small); 0: off
    capacity_factor: float = 0.0  # 0: dropless; > 0: each expert takes at most this x its fair share of tokens
    bias_update_speed: float = 0.0  # > 0: auxiliary-loss-free balancing (DeepSeek-V3), per-step bias change


@dataclass
class ModelConfig:
    vocab_size: int = 0  # 0: taken from the tokenizer (rounded up to a multiple of 64)
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 0  # 0: same as n_heads (multi-head attention); fewer: grouped-query
    head_dim: int = 0  # 0: d_model // n_heads; set when heads were pruned away
    d_ff: int = 0  # 0: SwiGLU default, 8/3 * d_model rounded up to a multiple of 64
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02
    moe: MoEConfig = field(default_factory=MoEConfig)


@dataclass
class DataConfig:
    sources: list[str] = field(default_factory=lambda: ["stdlib"])  # "stdlib": this Python's
    glob: str = "**/*"  # files picked inside folder sources
    vocab_size: int = 8192
    val_fraction: float = 0.02
    prepared_dir: str = "prepared"
    shard_tokens: int = 100_000_000
    # Fixes applied before tokenizing (docs/data-governance.md):
    dedup: bool = True  # keep the first document of each near-duplicate cluster
    redact_pii: bool = True  # replace e-mail and IP addresses, phone numbers and credentials by typed markers
    decontaminate: bool = True  # drop the overlap between training and evaluation text (validation split, eval_sources)
    eval_sources: list[str] = field(default_factory=list)  # evaluation sets to keep out of training
    contamination_ngram: int = 13
    contamination_threshold: float = 0.2  # share of a document's n-grams found on the other side
    licenses: list[str] = field(default_factory=list)  # "SOURCE=SPDX" declarations for the dataset card


@dataclass
class TrainConfig:
    seed: int = 1337
    steps: int = 1000
    seq_len: int = 256
    batch_tokens: int = 16384  # global batch, in tokens, per optimizer step
    micro_batch_size: int = 16  # sequences per forward pass and process
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    schedule: str = "cosine"  # cosine | wsd | constant
    warmup_steps: int = 50
    decay_fraction: float = 0.2  # wsd: share of steps spent decaying at the end
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    dtype: str = "auto"  # auto | bf16 | fp32
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False
    eval_every: int = 100
    eval_batches: int = 8
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    async_checkpoint: bool = False  # write checkpoints in the background while training goes on
    qat: str = ""  # int8-wo | int8-dyn | int4-wo: quantization-aware training for that method; empty: off
    qat_group_size: int = 32  # qat = int4-wo: weights per scale
    max_bad_steps: int = 5  # consecutive non-finite losses before training stops
    out_dir: str = "runs"
    run_name: str = ""  # empty: the preset's name


@dataclass
class ParallelConfig:
    dp_replicate: int = 1  # replicas of the model (HSDP's outer dimension, or plain data parallel)
    dp_shard: int = -1  # FSDP shard group size; -1: every process that dp_replicate and tp leave
    tp: int = 1  # tensor parallel ranks per model replica
    ep: int = 1  # expert parallel: MoE experts split over this many data-parallel ranks
    activation_checkpoint: str = "none"  # none | block | selective: trade recomputation for activation memory
    timeout_s: float = 600.0  # a collective waiting longer than this fails with an error naming the rank


@dataclass
class LoggingConfig:
    log_every: int = 10
    progress: bool = True
    plot: bool = True
    mlflow: bool = True  # also log the run to MLflow (OUT_DIR/registry, or MLFLOW_TRACKING_URI) when it is installed


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    preset: str = DEFAULT_PRESET

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.train.out_dir) / (self.train.run_name or self.preset)


SECTIONS = tuple(f.name for f in fields(Config) if f.name != "preset")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the field type `tp`; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin in (list,):
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(key, v, item_tp) for v in value]
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"config key '{key}' has an unsupported type")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")


def _apply(cfg: Config, key: str, value: Any) -> None:
    """Set `section.key` (or `section.table.key`) to `value`; a table value sets each of its keys."""
    parts = key.split(".")
    if len(parts) < 2 or parts[0] not in SECTIONS:
        raise ConfigError(f"unknown config key '{key}' (sections: {', '.join(SECTIONS)})")
    obj = getattr(cfg, parts[0])
    for depth, name in enumerate(parts[1:], start=1):
        types_by_name = typing.get_type_hints(type(obj))
        if name not in types_by_name:
            allowed = ", ".join(types_by_name)
            raise ConfigError(f"unknown config key '{key}' (allowed in [{'.'.join(parts[:depth])}]: {allowed})")
        tp = types_by_name[name]
        if is_dataclass(tp):  # a nested table such as [model.moe]
            if depth == len(parts) - 1:
                if not isinstance(value, dict):
                    raise ConfigError(f"config key '{key}' is a table ([{key}]), got {value!r}")
                for sub, sub_value in value.items():
                    _apply(cfg, f"{key}.{sub}", sub_value)
                return
            obj = getattr(obj, name)
        elif depth == len(parts) - 1:
            setattr(obj, name, _coerce(key, value, tp))
        else:
            raise ConfigError(f"unknown config key '{key}' ('{'.'.join(parts[:depth + 1])}' is not a table)")


def _parse_override(text: str) -> tuple[str, Any]:
    """`train.lr=3e-4` -> ("train.lr", 0.0003); values are TOML, bare words are strings."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def preset_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    candidate = PRESETS_DIR / f"{name_or_path}.toml"
    if not candidate.is_file():
        names = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.toml")))
        raise ConfigError(f"unknown preset '{name_or_path}' (presets: {names}; or pass a .toml path)")
    return candidate


def load_config(preset: str = DEFAULT_PRESET, overrides: list[str] | None = None) -> Config:
    """Load a preset name or TOML path, apply `section.key=value` overrides, validate."""
    path = preset_path(preset)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    cfg = Config(preset=path.stem)
    for section, table in data.items():
        if section not in SECTIONS or not isinstance(table, dict):
            raise ConfigError(f"unknown config section '[{section}]' in {path} (sections: {', '.join(SECTIONS)})")
        for name, value in table.items():
            _apply(cfg, f"{section}.{name}", value)
    for text in overrides or []:
        _apply(cfg, *_parse_override(text))
    validate(cfg)
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config saved with `to_dict` (checkpoints, bundles)."""
    cfg = Config(preset=data.get("preset", DEFAULT_PRESET))
    for section in SECTIONS:
        for name, value in data.get(section, {}).items():
            _apply(cfg, f"{section}.{name}", value)
    validate(cfg)
    return cfg


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Rebuild a ModelConfig saved with asdict (bundles), nested tables included, with the same type checks."""
    cfg = Config()
    for name, value in data.items():
        _apply(cfg, f"model.{name}", value)
    return cfg.model


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    m, d, t, p = cfg.model, cfg.data, cfg.train, cfg.parallel
    for key, value in [("model.d_model", m.d_model), ("model.n_layers", m.n_layers),
                       ("model.n_heads", m.n_heads), ("model.max_seq_len", m.max_seq_len),
                       ("train.steps", t.steps), ("train.seq_len", t.seq_len),
                       ("train.batch_tokens", t.batch_tokens), ("train.micro_batch_size", t.micro_batch_size),
                       ("train.eval_every", t.eval_every), ("train.checkpoint_every", t.checkpoint_every),
                       ("train.keep_checkpoints", t.keep_checkpoints), ("train.max_bad_steps", t.max_bad_steps),
                       ("data.vocab_size", d.vocab_size), ("data.shard_tokens", d.shard_tokens),
                       ("parallel.dp_replicate", p.dp_replicate), ("parallel.tp", p.tp),
                       ("logging.log_every", cfg.logging.log_every)]:
        _require(value > 0, f"config key '{key}' must be a positive integer, got {value}")
    if m.head_dim == 0:
        _require(m.d_model % m.n_heads == 0,
                 f"config key 'model.n_heads' ({m.n_heads}) must divide model.d_model ({m.d_model})")
    head_dim = m.head_dim or m.d_model // m.n_heads
    _require(head_dim > 0 and head_dim % 2 == 0,
             f"the head size is {head_dim} (model.head_dim, or d_model / n_heads); rotary embeddings need it even")
    kv_heads = m.n_kv_heads or m.n_heads
    _require(0 < kv_heads <= m.n_heads and m.n_heads % kv_heads == 0,
             f"config key 'model.n_kv_heads' ({m.n_kv_heads}) must divide model.n_heads ({m.n_heads})")
    _require(m.rope_theta > 0 and m.norm_eps > 0 and m.init_std > 0,
             "config keys 'model.rope_theta', 'model.norm_eps' and 'model.init_std' must be > 0")
    _require(m.vocab_size >= 0 and m.d_ff >= 0, "config keys 'model.vocab_size' and 'model.d_ff' must be >= 0 (0: automatic)")
    _require(d.vocab_size >= 257, f"config key 'data.vocab_size' must be >= 257 (256 bytes + end of text), got {d.vocab_size}")
    _require(0.0 < d.val_fraction < 0.5, f"config key 'data.val_fraction' must be in (0, 0.5), got {d.val_fraction}")
    _require(len(d.sources) > 0, "config key 'data.sources' must name at least one source (or \"stdlib\")")
    _require(d.contamination_ngram > 0, f"config key 'data.contamination_ngram' must be a positive integer, got "
             f"{d.contamination_ngram}")
    _require(0 < d.contamination_threshold <= 1, "config key 'data.contamination_threshold' must be in (0, 1], got "
             f"{d.contamination_threshold}")
    _require(t.seq_len <= m.max_seq_len,
             f"config key 'train.seq_len' ({t.seq_len}) must be <= model.max_seq_len ({m.max_seq_len})")
    micro_tokens = t.seq_len * t.micro_batch_size
    _require(t.batch_tokens % micro_tokens == 0,
             f"config key 'train.batch_tokens' ({t.batch_tokens}) must be a multiple of train.seq_len * "
             f"train.micro_batch_size ({micro_tokens})")
    _require(t.eps > 0, f"config key 'train.eps' must be > 0, got {t.eps}")
    _require(math.isfinite(t.lr) and t.lr > 0 and 0 <= t.min_lr_ratio <= 1,
             "config keys 'train.lr' (finite, > 0) and 'train.min_lr_ratio' (in [0, 1]) are out of range")
    _require(t.schedule in ("cosine", "wsd", "constant"),
             f"config key 'train.schedule' must be cosine, wsd or constant, got '{t.schedule}'")
    _require(0 <= t.warmup_steps < t.steps,
             f"config key 'train.warmup_steps' ({t.warmup_steps}) must be >= 0 and below train.steps ({t.steps})")
    _require(0 < t.decay_fraction <= 1, f"config key 'train.decay_fraction' must be in (0, 1], got {t.decay_fraction}")
    _require(0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, "config keys 'train.beta1' and 'train.beta2' must be in [0, 1)")
    _require(t.weight_decay >= 0 and t.grad_clip >= 0, "config keys 'train.weight_decay' and 'train.grad_clip' must be >= 0")
    _require(t.qat in ("", "int8-wo", "int8-dyn", "int4-wo"),
             f"config key 'train.qat' must be empty (off), int8-wo, int8-dyn or int4-wo, got '{t.qat}'")
    _require(t.qat_group_size in (32, 64, 128, 256),
             f"config key 'train.qat_group_size' must be 32, 64, 128 or 256, got {t.qat_group_size}")
    _require(not t.qat or p.tp == 1, "config key 'train.qat' does not combine with tensor parallelism (parallel.tp > 1)")
    _require(t.dtype in ("auto", "bf16", "fp32"), f"config key 'train.dtype' must be auto, bf16 or fp32, got '{t.dtype}'")
    _require(t.device in ("auto", "cpu", "cuda"), f"config key 'train.device' must be auto, cpu or cuda, got '{t.device}'")
    _require(p.dp_shard == -1 or p.dp_shard > 0, f"config key 'parallel.dp_shard' must be a positive integer or -1 "
             f"(all remaining processes), got {p.dp_shard}")
    _require(p.activation_checkpoint in ("none", "block", "selective"), "config key 'parallel.activation_checkpoint' "
             f"must be none, block or selective, got '{p.activation_checkpoint}'")
    _require(p.timeout_s > 0, f"config key 'parallel.timeout_s' must be > 0, got {p.timeout_s}")
    validate_moe(m.moe, m.n_layers)
    _require(p.ep > 0, f"config key 'parallel.ep' must be a positive integer, got {p.ep}")
    if p.ep > 1:
        _require(m.moe.n_experts > 0, f"config key 'parallel.ep' ({p.ep}) splits MoE experts, but model.moe.n_experts is 0")
        _require(m.moe.n_experts % p.ep == 0,
                 f"config key 'parallel.ep' ({p.ep}) must divide model.moe.n_experts ({m.moe.n_experts})")
        _require(m.moe.capacity_factor == 0, "config key 'model.moe.capacity_factor' must be 0 (dropless) with "
                 "parallel.ep > 1: capacity routing runs on one rank's experts only")
        # The experts' own FSDP unit inside a checkpointed block gathers differently when recomputed, which
        # selective checkpointing's op-by-op replay cannot follow.
        _require(p.activation_checkpoint != "selective", "config key 'parallel.activation_checkpoint' must be none "
                 "or block with parallel.ep > 1 (selective checkpointing does not support expert parallel)")
    _require(m.moe.n_experts == 0 or p.tp == 1, "config key 'parallel.tp' must be 1 for MoE models (tensor parallel "
             "of routed experts is not supported); split experts with parallel.ep instead")
    _require(t.eval_batches >= 0, f"config key 'train.eval_batches' must be >= 0, got {t.eval_batches}")


def validate_moe(moe: MoEConfig, n_layers: int) -> None:
    _require(moe.n_experts >= 0, f"config key 'model.moe.n_experts' must be >= 0 (0: dense), got {moe.n_experts}")
    if moe.n_experts == 0:
        return
    _require(0 < moe.top_k <= moe.n_experts,
             f"config key 'model.moe.top_k' ({moe.top_k}) must be between 1 and model.moe.n_experts ({moe.n_experts})")
    _require(1 <= moe.every <= n_layers,
             f"config key 'model.moe.every' ({moe.every}) must be between 1 and model.n_layers ({n_layers})")
    _require(moe.shared_experts >= 0 and moe.d_ff >= 0,
             "config keys 'model.moe.shared_experts' and 'model.moe.d_ff' must be >= 0")
    _require(moe.score_func in ("softmax", "sigmoid"),
             f"config key 'model.moe.score_func' must be softmax or sigmoid, got '{moe.score_func}'")
    for key in ("aux_loss_coef", "z_loss_coef", "capacity_factor", "bias_update_speed"):
        value = getattr(moe, key)
        _require(math.isfinite(value) and value >= 0, f"config key 'model.moe.{key}' must be >= 0, got {value}")
