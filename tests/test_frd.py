"""nnaug.frd gives what frd-score gives on the same folders (RGB and grayscale), and says its log convention."""
from __future__ import annotations

import math

import numpy as np
import pytest

SIZE = 64


def _folders(shared_data, tmp_path, mode: str):
    """Kvasir images 0-19 and 20-39 as two PNG folders (``mode`` RGB or L), and the pixels as read back."""
    from PIL import Image

    paths = sorted((shared_data / "kvasir-seg-80" / "images").iterdir())[:40]
    sets = []
    for name, chunk in (("a", paths[:20]), ("b", paths[20:])):
        folder = tmp_path / f"{mode}_{name}"
        folder.mkdir()
        pixels = []
        for path in chunk:
            image = Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR).convert(mode)
            image.save(folder / f"{path.stem}.png")
            pixels.append(np.asarray(Image.open(folder / f"{path.stem}.png")))
        sets.append((folder, np.stack(pixels)))
    return sets


@pytest.mark.slow  # radiomics features of 4 x 20 Kvasir images, twice each
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_frd_equals_frd_score_on_the_same_files(shared_data, tmp_path, mode):
    from frd_score import compute_frd

    from nnaug.frd import LOG_CONVENTION, _quiet, frd

    (folder_a, pixels_a), (folder_b, pixels_b) = _folders(shared_data, tmp_path, mode)
    ours = frd(pixels_a, pixels_b)
    with _quiet():
        reference = float(compute_frd([str(folder_a), str(folder_b)]))  # the package's defaults, its own reading
    assert math.isfinite(reference)
    assert ours["frd"] == pytest.approx(reference, abs=1e-6), (ours["frd"], reference)
    assert ours["colour"] == ("rgb" if mode == "RGB" else "gray") and ours["log"] == LOG_CONVENTION == "log(d²)"
    assert (ours["n_a"], ours["n_b"]) == (20, 20)
    if mode == "L":  # grayscale given as 3 equal channels (as nnaug's loaders replicate gray) reads the same
        replicated = frd(np.repeat(pixels_a[:, None], 3, 1), np.repeat(pixels_b[:, None], 3, 1))
        assert replicated["frd"] == pytest.approx(reference, abs=1e-6) and replicated["colour"] == "gray"
