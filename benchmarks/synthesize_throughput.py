"""Synthesis throughput: cases/s and peak memory against batch size (tiny JDM preset).

    python benchmarks/synthesize_throughput.py [--generator DIR] [--batch-sizes 1,4,16,64] [--steps 25]

Runs the generator's sampling + resize + nnU-Net writing path of ``nnaug synthesize`` for each batch
size in one process (on the GPU when there is one). Without --generator it trains the tiny preset on
the built-in example dataset in a temp folder first.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PeakMemory, print_table  # noqa: E402
from jdm_sampling import _default_generator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", type=Path)
    parser.add_argument("--batch-sizes", default="1,4,16,64")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--cases", type=int, default=64)
    parser.add_argument("--mode", default="joint", choices=["joint", "mask-conditioned"])
    args = parser.parse_args()

    from nnaug.synthesize import SynthesisOptions, synthesize

    work = Path(tempfile.mkdtemp(prefix="nnaug-bench-"))
    folder = args.generator or _default_generator(work, 50)
    from nnaug.generators import read_info

    info = read_info(folder)
    from nnaug.dataset import load_raw_dataset

    num_real = len(load_raw_dataset(info["source_dataset"]).cases)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for i, batch in enumerate(int(b) for b in args.batch_sizes.split(",")):
        opts = SynthesisOptions(ratio=args.cases / num_real, generator=folder, mode=args.mode, steps=args.steps,
                                batch_size=batch, output_id=900 + i, device=device)
        try:
            with PeakMemory(device) as mem:
                start = time.perf_counter()
                out = synthesize(info["source_dataset"], opts, progress=False)
                seconds = time.perf_counter() - start
        except torch.OutOfMemoryError:
            rows.append([batch, "out of memory", "", ""])
            break
        n = len(list((out / "labelsTr").iterdir()))
        rows.append([batch, n / seconds, seconds, mem.mib])
    print(f"nnaug synthesize, generator {folder} ({info['resolution']} px), {args.mode}, {opts.sampler} {args.steps} steps, "
          f"{args.cases} cases per run, device {device}, threads {torch.get_num_threads()}")
    print_table(["batch size", "cases/s", "wall s", "peak memory above start (MiB)"], rows)


if __name__ == "__main__":
    main()
