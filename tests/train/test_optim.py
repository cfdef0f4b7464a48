import pytest
import torch

from shoal.config import load_config
from shoal.train.optim import build_optimizer, lr_at


def schedule(name, **extra):
    overrides = [f"train.schedule={name}", "train.steps=100", "train.warmup_steps=10", "train.lr=1.0",
                 "train.min_lr_ratio=0.1"] + [f"train.{k}={v}" for k, v in extra.items()]
    cfg = load_config("tiny", overrides).train
    return [lr_at(step, cfg) for step in range(cfg.steps)]


def test_warmup_then_cosine_to_the_floor():
    lrs = schedule("cosine")
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert lrs[55] == pytest.approx(0.55, abs=0.02)  # halfway through the cosine: midpoint of peak and floor


def test_wsd_holds_then_decays_linearly():
    lrs = schedule("wsd", decay_fraction=0.2)
    assert all(lr == 1.0 for lr in lrs[10:80])
    assert lrs[-1] == pytest.approx(0.1)
    assert lrs[89] == pytest.approx(1.0 - 0.9 * 10 / 20)


def test_constant():
    assert schedule("constant")[10:] == [1.0] * 90


def test_weight_decay_only_on_matrices():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, load_config("tiny").train)
    assert opt.defaults["fused"]
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] > 0 and plain["weight_decay"] == 0
    assert {p.dim() for p in decayed["params"]} == {2} and {p.dim() for p in plain["params"]} == {1}
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
