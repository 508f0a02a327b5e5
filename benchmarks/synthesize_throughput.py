"""Synthesis throughput: cases/s, peak memory and (on a GPU) model FLOPs utilisation against batch size.

    python benchmarks/synthesize_throughput.py [--preset tiny|small|paper | --generator DIR]
                                               [--batch-sizes 1,8,32] [--steps 25] [--cases 64]

Runs ``nnaug synthesize`` (sampling, resizing, nnU-Net writing) for each batch size in one process,
on the GPU when there is one. Without --generator it builds a JDM of ``--preset`` on the built-in
example dataset (one training step: throughput does not depend on the weights). MFU counts the
UNet's forward FLOPs once (torch's FlopCounterMode) x steps x cases, over the dense bf16 peak.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PeakMemory, nnunet_folders, print_table  # noqa: E402
from jdm_train_step import peak_tflops  # noqa: E402


def untrained_generator(work: Path, preset: str) -> Path:
    """A JDM of ``preset`` on the example dataset after one step (no contact sheet)."""
    nnunet_folders(work)
    from nnaug.example import write_example_dataset
    from nnaug.train_generator import train_generator

    write_example_dataset(999)
    return train_generator("999", model="jdm", preset=preset, progress=False,
                           overrides={"steps": 1, "batch_size": 2, "preview_count": 0})


def forward_flops(unet) -> float:
    """FLOPs of one UNet forward at batch 1."""
    from torch.utils.flop_counter import FlopCounterMode

    size, channels = unet.config.sample_size, unet.config.in_channels
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(torch.randn(1, channels, size, size, device=unet.device), torch.tensor([500], device=unet.device))
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", type=Path)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "paper"])
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--cases", type=int, default=64)
    parser.add_argument("--mode", default="joint", choices=["joint", "mask-conditioned"])
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of your GPU, TFLOP/s")
    args = parser.parse_args()

    from nnaug.dataset import load_raw_dataset
    from nnaug.generators import load_generator, read_info
    from nnaug.synthesis import SynthesisOptions, synthesize

    work = Path(tempfile.mkdtemp(prefix="nnaug-bench-"))
    folder = args.generator or untrained_generator(work, args.preset)
    info = read_info(folder)
    num_real = len(load_raw_dataset(info["source_dataset"]).cases)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    flops_per_case = forward_flops(load_generator(folder, device=device).unet) * args.steps
    peak = peak_tflops(device, args.peak_tflops)
    rows = []
    for i, batch in enumerate(int(b) for b in args.batch_sizes.split(",")):
        opts = SynthesisOptions(ratio=args.cases / num_real, generator=folder, mode=args.mode, steps=args.steps,
                                batch_size=batch, output_id=900 + i, device=device, overwrite=True)
        with PeakMemory(device) as mem:
            start = time.perf_counter()
            out = synthesize(info["source_dataset"], opts, progress=False)
            seconds = time.perf_counter() - start
        n = len(list((out / "labelsTr").iterdir()))
        mfu = f"{flops_per_case * n / seconds / (peak * 1e12):.1%}" if peak else "n/a (no GPU)"
        rows.append([batch, n / seconds, seconds, mem.mib, mfu])
    print(f"nnaug synthesize, generator {folder.name} ({info['resolution']} px), {args.mode}, {args.steps} sampling steps, "
          f"{args.cases} cases per run, device {device}, threads {torch.get_num_threads()}; "
          f"UNet forward {flops_per_case / args.steps / 1e9:.2f} GFLOP per case and step")
    print_table(["batch size", "cases/s", "wall s", "peak memory above start (MiB)", "MFU (bf16 peak)"], rows)


if __name__ == "__main__":
    main()
