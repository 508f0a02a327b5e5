"""Mask-conditioned JDM sampling: seconds per image and closeness to 1000-step ancestral sampling.

On one trained generator, the same masks are completed by every sampler. Closeness is KID between
each sample set and the 1000-step DDPM set (torch-fidelity; a local InceptionV3 weights file when
given, else a fixed-seed randomly initialised extractor — the table says which), plus the mean Dice
between requested and returned masks (must be 1.0).

    python benchmarks/jdm_sampling.py [--generator DIR] [--inception-weights FILE] [--num 48]

Without --generator it trains the tiny preset on the built-in example dataset in a temp folder.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table  # noqa: E402

SETTINGS = [("ddpm", 1000), ("ddpm", 100), ("ddim", 50), ("dpmsolver++", 25), ("unipc", 25), ("dpmsolver++", 10)]


def _default_generator(work: Path, steps: int) -> Path:
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[var] = str(work / var)
        (work / var).mkdir(parents=True, exist_ok=True)
    from nnaug.example import write_example_dataset
    from nnaug.train_generator import train_generator

    write_example_dataset(999)
    return train_generator("999", model="jdm", preset="tiny", overrides={"steps": steps}, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", type=Path)
    parser.add_argument("--inception-weights", type=Path)
    parser.add_argument("--num", type=int, default=48, help="masks to complete per sampler")
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--train-steps", type=int, default=600, help="tiny training steps when no --generator")
    args = parser.parse_args()

    from nnaug.dataset import PairDataset, load_raw_dataset
    from nnaug.generators import load_generator, read_info
    from nnaug.metrics import fid_kid, make_random_inception_weights
    from nnaug.visualize import to_uint8_rgb

    work = Path(tempfile.mkdtemp(prefix="nnaug-bench-"))
    folder = args.generator or _default_generator(work, args.train_steps)
    info = read_info(folder)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = load_generator(folder, device=device)
    raw = load_raw_dataset(info["source_dataset"])
    pairs = PairDataset(raw, info["resolution"], progress=False)
    masks = pairs.labels[torch.arange(args.num) % len(pairs.labels)]
    real = torch.stack([torch.from_numpy(to_uint8_rgb(i.numpy())).permute(2, 0, 1) for i in pairs.images])
    weights = args.inception_weights
    extractor = f"InceptionV3 weights {weights}"
    if weights is None:
        weights = make_random_inception_weights(work / "random_inception.pth", seed=0)
        extractor = "fixed-seed random InceptionV3 (no weights given): KID values are relative only"

    sets, rows = {}, []
    for sampler, steps in SETTINGS:
        start = time.perf_counter()
        images, labels = [], []
        for s in range(0, args.num, args.batch_size):
            img, lab = generator.sample(list(range(s, min(s + args.batch_size, args.num))),
                                        labels=masks[s:s + args.batch_size], sampler=sampler, steps=steps)
            images.append(img)
            labels.append(lab)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / args.num
        images, labels = torch.cat(images), torch.cat(labels)
        fg_req, fg_out = masks > 0, labels > 0
        dice = float((2 * (fg_req & fg_out).sum() + 1e-8) / (fg_req.sum() + fg_out.sum() + 1e-8))
        exact = bool(torch.equal(labels, masks))
        sets[(sampler, steps)] = torch.stack([torch.from_numpy(to_uint8_rgb(i.numpy())).permute(2, 0, 1) for i in images])
        rows.append([sampler, steps, seconds, dice, exact])
    reference = sets[SETTINGS[0]]
    table = []
    kid_real_1000 = fid_kid(reference, real, inception_weights=weights)["kid_mean"]
    for (sampler, steps), row in zip(SETTINGS, rows):
        kid_ref = fid_kid(sets[(sampler, steps)], reference, inception_weights=weights)["kid_mean"] if (sampler, steps) != SETTINGS[0] else 0.0
        kid_real = fid_kid(sets[(sampler, steps)], real, inception_weights=weights)["kid_mean"]
        table.append(row[:3] + [1000 / steps, kid_ref, kid_real, kid_real / kid_real_1000] + row[3:])
    print(f"generator {folder} ({info['steps_trained']} steps, {info['resolution']} px), {args.num} masks, device {device}")
    print(f"extractor: {extractor}")
    print_table(["sampler", "steps", "s/image", "fewer evals vs 1000", "KID vs ddpm-1000 set", "KID vs real", "KID vs real / ddpm-1000's", "mask Dice", "mask exact"], table)


if __name__ == "__main__":
    main()
