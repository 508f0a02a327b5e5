"""JDM training step: nnaug vs a bare PyTorch loop, plain and with each GPU fast-path switch.

For each setting (float32; bf16 autocast; TF32; channels-last; fused AdamW; torch.compile; all of
them) the same diffusers UNet2DModel runs in two arms in the same process, alternating rounds:

* bare loop: forward -> epsilon MSE -> backward -> AdamW, with the setting applied by hand;
* nnaug: ``nnaug.generator_training.GeneratorTrainer.train_step`` (accelerate, batch sampling and augmentation, hybrid
  loss with learned variance, gradient clipping, LR schedule, EMA), with the setting as TrainConfig.

Reported: s/step, samples/s, nnaug / bare, speed against nnaug float32, peak memory, and on a GPU the
model FLOPs utilisation: UNet forward+backward FLOPs (counted once with torch's FlopCounterMode)
per second over the GPU's dense bf16 peak (``--peak-tflops`` for a GPU not in the table).

    python benchmarks/jdm_train_step.py [--preset tiny|small|paper] [--batch-size N] [--steps 20]
                                        [--settings fp32,bf16,...]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PeakMemory, print_table  # noqa: E402

from nnaug.generators.jdm.model import JDMArchitecture, JDMModel  # noqa: E402
from nnaug.generators.jdm.presets import OBJECTIVE_PAPER, PRESETS, scheduler_config  # noqa: E402
from nnaug.generator_training import TrainConfig, GeneratorTrainer, float32_precision  # noqa: E402

# One switch per row, then all together (TrainConfig fields).
SETTINGS = {
    "fp32": {},
    "bf16": {"mixed_precision": "bf16"},
    "tf32": {"tf32": True},
    "channels-last": {"channels_last": True},
    "fused-adamw": {"fused_adamw": True},
    "compile": {"compile": True},
    "all": {"mixed_precision": "bf16", "tf32": True, "channels_last": True, "fused_adamw": True, "compile": True},
}
# Dense bf16 tensor-core peak, TFLOP/s (vendor data sheets).
PEAK_BF16_TFLOPS = {"H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.5, "H200": 989.4,
                    "A100": 312.0, "L40S": 362.05, "A10G": 70.0, "L4": 121.0, "RTX 4090": 165.2}


def peak_tflops(device: str, override: float | None) -> float | None:
    if override:
        return override
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def train_flops(unet, batch: int, channels: int, res: int) -> float:
    """Forward + backward FLOPs of one UNet step at ``batch`` (counted at batch 1: they scale linearly)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = copy.deepcopy(unet).cpu()
    x = torch.randn(1, channels, res, res)
    with FlopCounterMode(display=False) as counter:
        net(x, torch.tensor([500])).sample.float().square().mean().backward()
    return counter.get_total_flops() * batch


def bare_arm(unet, x0, setting: dict, device: str):
    """The plainest loop that can use ``setting``: what nnaug's step is compared against."""
    net = copy.deepcopy(unet).to(device).train()
    memory_format = torch.channels_last if setting.get("channels_last") else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    if setting.get("compile"):
        net.compile()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True if setting.get("fused_adamw") else None)
    x0 = x0.to(device).contiguous(memory_format=memory_format)
    abar = torch.linspace(0.9999, 0.0001, 1000, device=device)
    autocast = (torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
                if setting.get("mixed_precision") == "bf16" else contextlib.nullcontext())

    def step():
        with float32_precision(setting.get("tf32", False)):
            t = torch.randint(0, 1000, (x0.shape[0],), device=device)
            noise = torch.randn_like(x0)
            ab = abar[t].view(-1, 1, 1, 1)
            with autocast:
                out = net(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t).sample
            loss = torch.nn.functional.mse_loss(out[:, : x0.shape[1]].float(), noise)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return step


def nnaug_arm(unet, images, labels, setting: dict, batch: int, objective: dict):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # each setting gets its own accelerate mixed-precision state
    config = TrainConfig(steps=10**6, batch_size=batch, lr=1e-4, augment=True, checkpoint_every=10**6, **setting)
    model = JDMModel(copy.deepcopy(unet), 3, 1, scheduler_config(**objective), snr_gamma=objective.get("snr_gamma"))
    trainer = GeneratorTrainer(model, images, labels, config, Path(tempfile.mkdtemp()), info={}, progress=False)
    counter = [0]

    def step():
        trainer.train_step(counter[0])
        counter[0] += 1
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS))
    parser.add_argument("--steps", type=int, default=20, help="steps per round and arm")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per arm first (compile happens here)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the two arms (median reported)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from {','.join(SETTINGS)}")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of your GPU, TFLOP/s")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    preset = PRESETS[args.preset]
    objective = {k: preset[k] for k in OBJECTIVE_PAPER}
    batch = args.batch_size or preset["batch_size"]
    res = preset["resolution"]
    arch = JDMArchitecture(resolution=res, image_channels=3, mask_channels=1, channels=preset["channels"],
                           layers_per_block=preset["layers_per_block"],
                           attention_resolutions=preset["attention_resolutions"],
                           attention_head_dim=preset["attention_head_dim"],
                           learned_variance=objective["learned_variance"])
    torch.manual_seed(0)
    unet = arch.build_unet()
    images = torch.rand(64, 3, res, res) * 2 - 1
    labels = (torch.rand(64, res, res) > 0.5).long()
    x0 = torch.cat([images[:batch], labels[:batch, None].float() * 2 - 1], 1)
    flops = train_flops(unet, batch, 4, res)
    peak = peak_tflops(device, args.peak_tflops)

    rows, reference = [], None
    for name in args.settings.split(","):
        setting = SETTINGS[name]
        if device == "cpu" and name == "tf32":
            rows.append([name, "n/a on CPU", "", "", "", "", "", ""])
            continue
        arms = {"bare": bare_arm(unet, x0, setting, device), "nnaug": nnaug_arm(unet, images, labels, setting, batch, objective)}
        times, memory = {k: [] for k in arms}, {}
        for fn in arms.values():
            for _ in range(args.warmup):
                fn()
        for _ in range(args.rounds):
            for arm, fn in arms.items():
                with PeakMemory(device) as mem:
                    start = time.perf_counter()
                    for _ in range(args.steps):
                        fn()
                    if device == "cuda":
                        torch.cuda.synchronize()
                    times[arm].append((time.perf_counter() - start) / args.steps)
                memory[arm] = max(memory.get(arm, 0.0), mem.mib)
        bare, ours = (sorted(times[k])[len(times[k]) // 2] for k in ("bare", "nnaug"))
        reference = reference or ours
        mfu = f"{flops / ours / (peak * 1e12):.1%}" if peak else "n/a (no GPU)"
        rows.append([name, bare, ours, ours / bare, batch / ours, reference / ours, memory["nnaug"], mfu])
        del arms
    print(f"JDM training step, preset {args.preset} ({res} px, widths {tuple(preset['channels'])}), batch {batch}, "
          f"device {device}{' ' + torch.cuda.get_device_name() if device == 'cuda' else ''}, "
          f"threads {torch.get_num_threads()}, median of {args.rounds} rounds x {args.steps} steps; "
          f"UNet fwd+bwd {flops / 1e9:.1f} GFLOP per step")
    print_table(["setting", "bare s/step", "nnaug s/step", "nnaug / bare", "nnaug samples/s",
                 "speed vs nnaug fp32", "nnaug peak memory (MiB)", "MFU (bf16 peak)"], rows)


if __name__ == "__main__":
    main()
