"""The generator GeneratorTrainer's learning-rate schedules and gradient clipping, on a toy model (no diffusion)."""
from __future__ import annotations

import pytest
import torch

from nnaug.generator_training import TrainConfig, GeneratorTrainer


class Toy(torch.nn.Module):
    """One weight; loss = scale * w * mean(image), so the gradient norm is known."""

    def __init__(self, scale: float):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.scale = scale

    def forward(self, batch, step, max_steps, generator):
        loss = self.scale * self.w * batch["image"].mean()
        return loss, {"loss": float(loss)}


def _trainer(tmp_path, scale=1.0, **config) -> GeneratorTrainer:
    from accelerate import Accelerator

    images, labels = torch.ones(4, 1, 4, 4), torch.zeros(4, 4, 4, dtype=torch.long)
    cfg = TrainConfig(steps=10, batch_size=2, lr=0.1, use_ema=False, augment=False, **config)
    return GeneratorTrainer(Toy(scale), images, labels, cfg, tmp_path, {}, accelerator=Accelerator(cpu=True), progress=False)


@pytest.mark.parametrize("schedule,expected", [
    ("linear", [0.1 * (10 - k) / 8 for k in range(3, 11)]),  # after 2 warm-up steps: down to 0 at step 10
    ("constant", [0.1] * 8),  # as the published Siamese-Diffusion run
])
def test_lr_schedules_after_the_warmup(tmp_path, schedule, expected):
    trainer = _trainer(tmp_path, lr_schedule=schedule, warmup_steps=2)
    lrs = []
    for step in range(10):
        trainer.train_step(step)
        lrs.append(trainer.lr_schedule.get_last_lr()[0])
    assert lrs[:2] == pytest.approx([0.05, 0.1])  # the warm-up
    assert lrs[2:] == pytest.approx(expected)


@pytest.mark.parametrize("clip,expected_norm", [(1.0, 1.0), (0.0, 50.0)])
def test_gradient_clipping_can_be_switched_off(tmp_path, clip, expected_norm):
    trainer = _trainer(tmp_path, scale=50.0, max_grad_norm=clip)
    seen = []
    trainer.optimizer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(float(trainer.params[0].grad)))
    trainer.train_step(0)
    assert abs(seen[0]) == pytest.approx(expected_norm)


def test_siamese_paper_preset_is_the_published_optimiser():
    from nnaug.train_generator import resolve_settings, train_config_from

    config = train_config_from(resolve_settings("siamese", "paper", {}))
    assert (config.lr, config.lr_schedule, config.max_grad_norm, config.weight_decay) == (1e-5, "constant", 0.0, 0.01)
    tiny = train_config_from(resolve_settings("siamese", "tiny", {"lr_schedule": "cosine", "max_grad_norm": 0.5}))
    assert (tiny.lr_schedule, tiny.max_grad_norm) == ("cosine", 0.5)  # the options reach every generator
