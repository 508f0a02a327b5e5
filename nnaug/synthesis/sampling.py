"""One batch of cases from a loaded generator, as they are written: at the dataset's size, in its intensities."""
from __future__ import annotations

import numpy as np

from nnaug.dataset import from_model_range
from nnaug.errors import NnaugError
from nnaug.mask_augment import augment_mask
from nnaug.synthesis.work_folder import SynthesisRun


def sample_fitting(generator, seeds: list[int], labels, sampler: str, steps: int):
    """``generator.sample``, in halves while the GPU runs out of memory (each case has its own seed,
    so the split does not change what is drawn)."""
    import torch

    try:
        return generator.sample(seeds, labels=labels, sampler=sampler, steps=steps)
    except torch.OutOfMemoryError:
        if len(seeds) == 1:
            raise NnaugError("one case does not fit in the GPU's memory: free the GPU, or use --device cpu") from None
    torch.cuda.empty_cache()
    half = len(seeds) // 2
    parts = [sample_fitting(generator, part, None if labels is None else labels[cut], sampler, steps)
             for part, cut in ((seeds[:half], slice(0, half)), (seeds[half:], slice(half, None)))]
    return torch.cat([parts[0][0], parts[1][0]]), torch.cat([parts[0][1], parts[1][1]])


def real_labels(run: SynthesisRun):
    """The real masks a mask-conditioned run draws its masks from (None for joint pairs)."""
    from nnaug.dataset import PairDataset

    if run.plan["mode"] != "mask-conditioned":
        return None
    return PairDataset(run.raw, run.info["resolution"], progress=False).labels


def sample_cases(run: SynthesisRun, generator, cases: list[dict], labels_of_real) -> list[tuple]:
    """(pixels as written, label uint8) per case of one batch, at ``run.out_shape``; an augmented mask's
    parameters go into its case dict."""
    import torch
    import torch.nn.functional as F

    raw, plan, info = run.raw, run.plan, run.info
    real_index = {c.identifier: i for i, c in enumerate(raw.cases)}
    seeds = [c["seed"] for c in cases]
    labels = None
    if plan["mode"] == "mask-conditioned":
        masks = []
        for case in cases:
            label = labels_of_real[real_index[case["mask_from"]]].numpy()
            if plan["masks"] == "augmented":
                label, params = augment_mask(label, np.random.default_rng(case["seed"]), run.opts.augmentation)
                case["augmentation"] = params
            masks.append(torch.from_numpy(np.ascontiguousarray(label)))
        labels = torch.stack(masks)
    images, out_labels = sample_fitting(generator, seeds, labels, plan["sampler"], plan["steps"])
    out_shape = tuple(run.out_shape)
    images = F.interpolate(images.float(), size=out_shape, mode="bicubic", align_corners=False).clamp(-1, 1)
    out_labels = F.interpolate(out_labels[:, None].float(), size=out_shape, mode="nearest-exact")[:, 0].long()
    return [(from_model_range(image, info["intensity_mode"], info.get("intensity_low"), info.get("intensity_high")),
             label.astype(np.uint8)) for image, label in zip(images.numpy(), out_labels.numpy())]
