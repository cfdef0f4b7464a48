import pytest

from .test_trainer import build_trainer


def test_compiled_training_matches_eager(small_config):
    """train.compile wraps the model in torch.compile; the losses stay those of eager mode."""
    losses = {}
    for compile_model in (False, True):
        small_config.train.compile = compile_model
        trainer = build_trainer(small_config)
        losses[compile_model] = [trainer.train_step().loss for _ in range(3)]
        assert (trainer.micro_loss != trainer._micro_loss) == compile_model
        assert trainer.state_dict()["model"].keys() == trainer.model.state_dict().keys()  # no _orig_mod. prefix
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_compiled_moe_training_matches_eager(small_config):
    """In bf16 the MoE layer compiles without graph breaks (grouped GEMMs, no host sync) and trains as in eager."""
    import torch._dynamo

    small_config.model.moe.n_experts, small_config.model.moe.d_ff = 4, 64
    small_config.train.dtype = "bf16"
    losses = {}
    for compile_model in (False, True):
        small_config.train.compile = compile_model
        trainer = build_trainer(small_config)
        torch._dynamo.reset()
        losses[compile_model] = [trainer.train_step().loss for _ in range(3)]
        if compile_model:
            explained = torch._dynamo.explain(trainer._micro_loss)(trainer.loader.batch(0)[:2])
            assert explained.graph_break_count == 0, explained.break_reasons
    assert losses[True] == pytest.approx(losses[False], rel=2e-2)  # bf16: fused kernels round differently
