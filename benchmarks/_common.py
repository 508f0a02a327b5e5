"""Small helpers for the benchmark scripts: peak-RSS sampling and table printing."""
from __future__ import annotations

import os
import threading
import time

import psutil


class PeakMemory:
    """Peak resident memory (CPU) or peak allocated CUDA memory above the level at entry, in MiB."""

    def __init__(self, device: str = "cpu"):
        self.device = device

    def __enter__(self):
        import torch

        self.process = psutil.Process(os.getpid())
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = self.process.memory_info().rss
            self._stop = False
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def _watch(self):
        while not self._stop:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self._stop = True
            self._thread.join()
            self.mib = (max(self.peak, self.process.memory_info().rss) - self.base) / 2**20
        return False


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[str(h) for h in headers]] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(cells[0], widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")


# ----------------------------------------------------------------------------- Kvasir-80 split
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KVASIR_DEFAULT = os.path.join(os.environ.get("NNAUG_SHARED_DATA", os.path.join(os.path.dirname(REPO), "shared", "data")),
                              "kvasir-seg-80")


def nnunet_folders(work) -> dict:
    """Point nnU-Net's three folder variables at ``work/`` (created) for this process and its children."""
    from pathlib import Path

    folders = {var: Path(work) / var for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for var, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(folder)
    return folders


def kvasir_split(source, work, size: int, train_id: int, heldout_id: int, num_train: int = 40):
    """Kvasir-80 resized to ``size``², split by sorted file name: the first ``num_train`` cases become
    the training dataset ``train_id``, the rest the held-out dataset ``heldout_id`` (both nnU-Net raw,
    written by ``nnaug convert``). Kvasir's names are hashes, so sorted order is a fixed random split.
    Masks are resized bilinearly and thresholded at 127 (they are noisy JPEGs). Returns (train, heldout) folders;
    reused when they already exist."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from nnaug.convert import convert_folder, pair_files
    from nnaug.nnunet_paths import raw_root

    names = (f"Kvasir{size}Train", f"Kvasir{size}Heldout")
    targets = [raw_root() / f"Dataset{i:03d}_{n}" for i, n in zip((train_id, heldout_id), names)]
    if all((t / "dataset.json").is_file() for t in targets):
        return tuple(targets)
    source = Path(source)
    if not source.is_dir():
        raise SystemExit(f"Kvasir-80 not found at {source}: pass --data or set NNAUG_SHARED_DATA")
    pairs = pair_files(source)
    splits = (pairs[:num_train], pairs[num_train:])
    for (dataset_id, name), part in zip(zip((train_id, heldout_id), names), splits):
        resized = Path(work) / "resized" / name
        for sub in ("images", "masks"):
            (resized / sub).mkdir(parents=True, exist_ok=True)
        for stem, image_path, mask_path in part:
            image = Image.open(image_path).convert("RGB").resize((size, size), Image.BICUBIC)
            mask = np.asarray(Image.open(mask_path).convert("L").resize((size, size), Image.BILINEAR)) > 127
            image.save(resized / "images" / f"{stem}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(resized / "masks" / f"{stem}.png")
        convert_folder(resized, dataset_id, name, label_names=["background", "polyp"], overwrite=True, progress=False)
    return tuple(targets)
