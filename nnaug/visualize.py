"""Pictures a person looks at before trusting a generator: contact sheets and loss curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# distinct overlay colours for labels 1..K (label 0 stays transparent)
PALETTE = np.array([[255, 40, 40], [40, 220, 40], [60, 120, 255], [255, 200, 0], [255, 0, 255], [0, 230, 230]], np.float32)


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """[C, H, W] in [-1, 1] -> [H, W, 3] uint8 (gray replicated; extra channels dropped)."""
    img = np.clip((image + 1.0) * 127.5, 0, 255)
    img = np.repeat(img[:1], 3, 0) if img.shape[0] < 3 else img[:3]
    return np.moveaxis(img, 0, -1).astype(np.uint8)


def overlay(rgb: np.ndarray, label: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    out = rgb.astype(np.float32)
    for value in np.unique(label):
        if value == 0:
            continue
        where = label == value
        out[where] = (1 - alpha) * out[where] + alpha * PALETTE[(int(value) - 1) % len(PALETTE)]
    return out.astype(np.uint8)


def contact_sheet(images, labels, path: Path, columns: int = 4) -> Path:
    """One tile per pair, ``image | mask overlay``; images [N, C, H, W] in [-1, 1], labels [N, H, W]."""
    from PIL import Image

    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels)
    tiles = []
    for img, lab in zip(images, labels):
        rgb = to_uint8_rgb(img)
        tiles.append(np.concatenate([rgb, overlay(rgb, lab)], axis=1))
    if not tiles:
        raise ValueError("contact_sheet needs at least one pair")
    h, w, _ = tiles[0].shape
    rows = -(-len(tiles) // columns)
    cols = min(columns, len(tiles))
    sheet = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[r * (h + 2): r * (h + 2) + h, c * (w + 2): c * (w + 2) + w] = tile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = max(1, 128 // h)  # small samples are hard to judge at 1:1
    Image.fromarray(sheet).resize((sheet.shape[1] * scale, sheet.shape[0] * scale), Image.NEAREST).save(path)
    return path


def loss_curve(history: list[list[float]], path: Path) -> Path:
    """Training loss per step (and a running mean) as a PNG."""
    # a Figure on its own Agg canvas: no pyplot, so the caller's matplotlib backend stays as it was
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = np.array([h[0] for h in history])
    losses = np.array([h[1] for h in history])
    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
    if len(losses) >= 5:
        k = max(5, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
