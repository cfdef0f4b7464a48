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
