"""What FRD costs: wall time, CPU time and peak memory of ``nnaug.frd.frd`` (frd-score) on Kvasir.

Two sets of N cases at S px are compared, as `nnaug report` compares the real training images with
a synthetic dataset: set A holds the Kvasir-80 images (then their 90°-rotated and mirrored copies
until N are there), set B the next N of that sequence (other orientations of the same images). Rows:
frd-score's default feature set (FRDv1: Original + LoG + Wavelet images) and its `Original`-only
subset, each over the whole image and over the polyp masks (ROI), and the default with
``--max-images`` 50 (what `nnaug report --max-images 50` would use).

    python benchmarks/frd_cost.py                          # 200 vs 200 cases at 256 px
    python benchmarks/frd_cost.py --cases 50 --size 128 --rows default,original,default-mask-roi

CPU time counts frd-score's worker processes too (frd-score runs a process pool of CPU count − 2,
at least 1). Numbers are printed, never asserted; on a shared machine, read CPU time rather than wall.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import KVASIR_DEFAULT, print_table  # noqa: E402

ROWS = {
    "default": dict(masks=False, image_types=None, max_images=None),
    "default-mask-roi": dict(masks=True, image_types=None, max_images=None),
    "original": dict(masks=False, image_types=["Original"], max_images=None),
    "original-mask-roi": dict(masks=True, image_types=["Original"], max_images=None),
    "default-max-images-50": dict(masks=False, image_types=None, max_images=50),
}


def kvasir_orbit(folder: Path, count: int, size: int, offset: int):
    """``count`` (image uint8 [H, W, 3], mask [H, W]) pairs: Kvasir images in rotations/mirrorings, from ``offset``."""
    from PIL import Image

    names = sorted(p.name for p in (folder / "images").iterdir())
    images, masks = [], []
    for i in range(offset, offset + count):
        name, k = names[i % len(names)], i // len(names)
        image = np.asarray(Image.open(folder / "images" / name).convert("RGB").resize((size, size), Image.BILINEAR))
        mask = np.asarray(Image.open(folder / "masks" / name).convert("L").resize((size, size), Image.NEAREST)) > 127
        image, mask = np.rot90(image, k % 4), np.rot90(mask, k % 4)
        if (k // 4) % 2:
            image, mask = image[:, ::-1], mask[:, ::-1]
        images.append(np.ascontiguousarray(image))
        masks.append(np.ascontiguousarray(mask).astype(np.uint8))
    return np.stack(images), np.stack(masks)


def spread(n: int, limit: int | None) -> np.ndarray:
    if limit is None or n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))  # as nnaug's --max-images picks cases


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="kvasir-seg-80 folder (default: ../shared/data or $NNAUG_SHARED_DATA)")
    parser.add_argument("--cases", type=int, default=200, help="cases per set (default 200)")
    parser.add_argument("--size", type=int, default=256, help="image side in px (default 256)")
    parser.add_argument("--rows", default=",".join(ROWS), help="which rows, comma-separated: " + ", ".join(ROWS))
    parser.add_argument("--workers", type=int, default=None, help="frd-score processes (default: its own)")
    args = parser.parse_args()
    folder = args.data or Path(KVASIR_DEFAULT)
    if not (folder / "images").is_dir():
        raise SystemExit(f"Kvasir-80 not found at {folder}: pass --data or set NNAUG_SHARED_DATA")
    rows_wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows_wanted if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown row {unknown[0]!r}: use some of {', '.join(ROWS)}")

    from nnaug.frd import frd, frd_available

    if frd_available() is not None:  # also imports frd-score and PyRadiomics before anything is timed
        raise SystemExit(frd_available())
    a_img, a_msk = kvasir_orbit(folder, args.cases, args.size, 0)
    b_img, b_msk = kvasir_orbit(folder, args.cases, args.size, args.cases)
    print(f"FRD cost: Kvasir {args.cases} vs {args.cases} cases at {args.size} px, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start\n")
    table = []
    for name in rows_wanted:
        row = ROWS[name]
        ia, ib = spread(len(a_img), row["max_images"]), spread(len(b_img), row["max_images"])
        masks = (a_msk[ia], b_msk[ib]) if row["masks"] else (None, None)
        cpu0, wall0 = cpu_seconds(), time.time()
        result = frd(a_img[ia], b_img[ib], masks[0], masks[1], image_types=row["image_types"], num_workers=args.workers)
        wall, cpu = time.time() - wall0, cpu_seconds() - cpu0
        peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        table.append([name, f"{result['n_a']} vs {result['n_b']}", "+".join(result["image_types"]),
                      f"{result['frd']:.3f}", f"{wall:.0f}", f"{cpu:.0f}", f"{cpu / (result['n_a'] + result['n_b']):.2f}",
                      f"{peak_self:.0f}", f"{peak_child:.0f}"])
        print(f"  {name}: {wall:.0f} s wall, {cpu:.0f} s CPU", file=sys.stderr, flush=True)
    print_table(["setting", "images", "image types", "FRD", "wall s", "CPU s", "CPU s / image",
                 "peak RSS MB (this process)", "peak RSS MB (largest worker)"], table)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end; peak RSS values are maxima so far (they never go down)")


if __name__ == "__main__":
    main()
