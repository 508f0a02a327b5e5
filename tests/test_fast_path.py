"""The GPU fast-path switches (they must not change what is learned), and synthesis that splits a batch
that does not fit. On the CPU: TF32 is a no-op there, but the switch must still leave torch's globals alone."""
from __future__ import annotations

import pytest
import torch

from nnaug.generators.jdm.model import JDMArchitecture, JDMModel
from nnaug.generators.jdm.presets import scheduler_config
from nnaug.generator_training import TrainConfig, GeneratorTrainer


def _run(tmp_path, steps=4, **switches) -> GeneratorTrainer:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    torch.manual_seed(0)
    arch = JDMArchitecture(resolution=16, image_channels=3, mask_channels=1, channels=(16, 32), layers_per_block=1,
                           attention_resolutions=(8,), attention_head_dim=16, learned_variance=False)
    model = JDMModel(arch.build_unet(), 3, 1, scheduler_config(prediction="v", learned_variance=False))
    g = torch.Generator().manual_seed(1)
    images, labels = torch.rand(8, 3, 16, 16, generator=g) * 2 - 1, (torch.rand(8, 16, 16, generator=g) > 0.5).long()
    config = TrainConfig(steps=steps, batch_size=4, lr=1e-3, checkpoint_every=steps, preview_count=0, **switches)
    initial = _flat(model.parameters())
    trainer = GeneratorTrainer(model, images, labels, config, tmp_path, {}, accelerator=Accelerator(cpu=True), progress=False)
    trainer.run()
    trainer.update = _flat(trainer.params) - initial
    return trainer


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in params])


@pytest.mark.slow
def test_fast_path_switches_learn_the_same_thing(tmp_path):
    plain = _run(tmp_path / "plain")
    fast = _run(tmp_path / "fast", tf32=True, channels_last=True, fused_adamw=True)
    assert [h[1] for h in fast.history] == pytest.approx([h[1] for h in plain.history], rel=1e-4)
    assert fast.images.device.type == "cpu"  # the training set moves to a GPU only
    assert torch.backends.cuda.matmul.fp32_precision == "none"  # TF32 was on for the steps only
    assert fast.optimizer.optimizer.defaults["fused"] is True
    # Adam turns rounding into sign flips of tiny updates, so compare on average: the difference between
    # the two runs' weights is a thousandth of how far either moved.
    assert (fast.update - plain.update).abs().mean() < 1e-3 * plain.update.abs().mean()


@pytest.mark.slow
def test_compiled_networks_train_alike_and_export_plain_weights(tmp_path):
    from diffusers import UNet2DModel

    plain = _run(tmp_path / "plain", steps=3)
    compiled = _run(tmp_path / "compiled", steps=3, compile=True)
    assert getattr(compiled.accelerator.unwrap_model(compiled.model).unet, "_compiled_call_impl", None) is not None
    assert [h[1] for h in compiled.history] == pytest.approx([h[1] for h in plain.history], rel=1e-3)
    UNet2DModel.from_pretrained(str(tmp_path / "compiled"))  # no "_orig_mod." names in the exported files


class RunsOutOfMemory:
    """A real generator on a GPU that cannot hold more than two cases at once."""

    def __init__(self, generator, fits: int = 2):
        self.generator, self.fits, self.batches = generator, fits, []

    def sample(self, seeds, labels=None, sampler="ddim", steps=5):
        if len(seeds) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.batches.append(len(seeds))
        return self.generator.sample(seeds, labels=labels, sampler=sampler, steps=steps)


def test_a_batch_that_does_not_fit_is_sampled_in_halves_with_the_same_result():
    from nnaug.errors import NnaugError
    from nnaug.generators.jdm.sampling import JDMGenerator
    from nnaug.synthesis.sampling import sample_fitting

    torch.manual_seed(0)
    arch = JDMArchitecture(resolution=16, image_channels=3, mask_channels=1, channels=(16, 32), layers_per_block=1,
                           attention_resolutions=(8,), attention_head_dim=16, learned_variance=False)
    config = scheduler_config(prediction="v", learned_variance=False)
    info = {"image_channels": 3, "mask_channels": 1, "resolution": 16}
    jdm = JDMGenerator("unused", info, arch.build_unet().eval(), config)
    seeds = [3, 1, 4, 1, 5]
    whole = jdm.sample(seeds, sampler="ddim", steps=3)
    limited = RunsOutOfMemory(jdm)
    split = sample_fitting(limited, seeds, None, "ddim", 3)
    assert limited.batches == [2, 1, 2]  # 5 -> 2 + 3, and the 3 -> 1 + 2
    assert torch.allclose(split[0], whole[0], atol=1e-5) and torch.equal(split[1], whole[1])
    with pytest.raises(NnaugError, match="one case does not fit"):
        sample_fitting(RunsOutOfMemory(jdm, fits=0), [7], None, "ddim", 3)
