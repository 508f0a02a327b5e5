"""Seconds per training step and peak memory: nnaug's JDM step vs a bare PyTorch loop.

Same diffusers UNet2DModel (same config), same batch size, same process. The bare loop is
forward -> epsilon MSE -> backward -> AdamW; nnaug's step adds what a real run needs
(accelerate, hybrid loss with the learned variance, gradient clipping, LR schedule, EMA).

    python benchmarks/jdm_train_step.py [--preset tiny] [--steps 30] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PeakMemory, print_table  # noqa: E402

from nnaug.jdm.model import PRESETS, JDMArchitecture, JDMModel  # noqa: E402
from nnaug.training import TrainConfig, Trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each arm (median reported)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    preset = PRESETS[args.preset]
    batch = args.batch_size or preset["batch_size"]
    res = preset["resolution"]
    arch = JDMArchitecture(resolution=res, image_channels=3, mask_channels=1, channels=preset["channels"],
                           layers_per_block=preset["layers_per_block"],
                           attention_resolutions=preset["attention_resolutions"],
                           attention_head_dim=preset["attention_head_dim"])
    torch.manual_seed(0)
    unet = arch.build_unet()
    images = torch.rand(64, 3, res, res) * 2 - 1
    labels = (torch.rand(64, res, res) > 0.5).long()

    # bare loop
    bare = copy.deepcopy(unet).to(device).train()
    opt = torch.optim.AdamW(bare.parameters(), lr=1e-4)
    x0 = torch.cat([images[:batch], labels[:batch, None].float() * 2 - 1], 1).to(device)

    def bare_step():
        t = torch.randint(0, 1000, (batch,), device=device)
        noise = torch.randn_like(x0)
        ab = torch.linspace(0.9999, 0.0001, 1000, device=device)[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        out = bare(xt, t).sample
        loss = torch.nn.functional.mse_loss(out[:, :4], noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    # nnaug's step
    config = TrainConfig(steps=10**6, batch_size=batch, lr=1e-4, augment=True, checkpoint_every=10**6)
    trainer = Trainer(JDMModel(copy.deepcopy(unet), 3, 1), images, labels, config, Path(tempfile.mkdtemp()),
                      info={}, progress=False)
    step_counter = [0]

    def nnaug_step():
        trainer.train_step(step_counter[0])
        step_counter[0] += 1

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    results = {"bare loop": [], "nnaug": []}
    memory = {}
    for name, fn in (("bare loop", bare_step), ("nnaug", nnaug_step)):
        for _ in range(args.warmup):
            fn()
    for _ in range(args.rounds):
        for name, fn in (("bare loop", bare_step), ("nnaug", nnaug_step)):
            sync()
            with PeakMemory(device) as mem:
                start = time.perf_counter()
                for _ in range(args.steps):
                    fn()
                sync()
                results[name].append((time.perf_counter() - start) / args.steps)
            memory[name] = max(memory.get(name, 0.0), mem.mib)
    median = {k: sorted(v)[len(v) // 2] for k, v in results.items()}
    print(f"JDM training step, preset {args.preset} ({res} px, widths {preset['channels']}), batch {batch}, "
          f"device {device}, threads {torch.get_num_threads()}, median of {args.rounds} rounds x {args.steps} steps")
    print_table(["arm", "s/step", "ratio vs bare", "peak memory above start (MiB)"],
                [[k, median[k], median[k] / median["bare loop"], memory[k]] for k in results])


if __name__ == "__main__":
    main()
