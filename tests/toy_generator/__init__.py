"""A toy third generator, to show that adding one is one registry entry plus its own package.

It paints each class of a mask with a learnt colour (a 1x1 convolution over the mask's one-hot
channels) and adds a little seeded noise: no diffusion, but a real trainable, exportable and
sampleable generator that nnaug's train-generator and synthesize drive like the built-in ones.
"""
from __future__ import annotations

from nnaug.generators.registry import GeneratorSpec, lazy


SPEC = GeneratorSpec(
    name="toy", summary="paints each mask class with a learnt colour",
    presets={"tiny": dict(resolution=16, steps=40, batch_size=4, lr=0.05, checkpoint_every=20, noise=0.02,
                          use_ema=False, preview_count=2)},
    build=lazy("toy_generator.model:build"), load=lazy("toy_generator.model:ToyGenerator.from_pretrained"),
    required_files=("config.json", "diffusion_pytorch_model.safetensors"),
    supports_joint=False, default_sampling=("none", 1))
