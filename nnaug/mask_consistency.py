"""Everything that runs a trained nnU-Net on images to score them: :func:`mask_consistency` (Dice
between each synthetic mask and what a real-trained nnU-Net predicts on the synthetic image) and
:func:`segmentation_dice` (the same for any raw dataset, e.g. held-out test Dice); :func:`load_predictor`
and :func:`predicted_dices`, the same scoring for pairs held in memory with one loaded model
(``nnaug synthesize --min-consistency``); :func:`dice_per_label` and :func:`nnaug_trainers_env`, which
lets nnU-Net find nnaug's trainer classes for the duration of one call without changing the process
environment for good.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from nnaug.dataset_images import as_raw, select_cases, synthetic_identifiers
from nnaug.errors import NnaugError
from nnaug.nnunet_results import CHECKPOINT, check_model_folder


@contextlib.contextmanager
def nnaug_trainers_env():
    """``nnUNet_extTrainer`` set to nnaug's trainers inside the block (when unset or empty), restored after.

    nnU-Net resolves a checkpoint's trainer class by name, looking in ``nnUNet_extTrainer`` (read at
    call time), so a model trained with an nnaug trainer only loads with it set; a value the user set
    is left alone.
    """
    from unittest import mock

    from nnaug.nnunet_pretraining import trainers_path

    values = {} if os.environ.get("nnUNet_extTrainer") else {"nnUNet_extTrainer": trainers_path()}
    with mock.patch.dict(os.environ, values):
        yield


def dice_per_label(reference: np.ndarray, prediction: np.ndarray, labels: list[int] | None = None) -> dict[int, float]:
    """Dice per foreground label present in either map (both empty for a label: not counted)."""
    values = labels if labels is not None else sorted(set(np.unique(reference).tolist()) | set(np.unique(prediction).tolist()))
    out = {}
    for value in values:
        if value == 0:
            continue
        r, p = reference == value, prediction == value
        denom = r.sum() + p.sum()
        if denom == 0:
            continue
        out[int(value)] = float(2.0 * np.logical_and(r, p).sum() / denom)
    return out


def mask_consistency(synthetic_folder, model_training_output_dir, folds=(0,), device: str = "cpu",
                     max_cases: int | None = None, checkpoint_name: str = CHECKPOINT,
                     progress: bool = False) -> dict:
    """Dice between each synthetic mask and a real-trained nnU-Net's prediction on the synthetic image.

    ``synthetic_folder``: the synthetic raw dataset (folder, name or ID); ``model_training_output_dir``:
    ``$nnUNet_results/<Dataset>/<Trainer>__<Plans>__<config>``. Only the synthetic cases of a
    ``--mix`` dataset are checked. See :func:`segmentation_dice` for the prediction and the Dice.
    """
    raw = as_raw(synthetic_folder)
    return segmentation_dice(raw, model_training_output_dir, folds, device, synthetic_identifiers(raw), max_cases,
                             checkpoint_name, progress, desc=f"mask consistency {raw.name}")


def segmentation_dice(dataset, model_training_output_dir, folds=(0,), device: str = "cpu",
                      identifiers: list[str] | None = None, max_cases: int | None = None,
                      checkpoint_name: str = CHECKPOINT, progress: bool = False, desc: str = "Dice") -> dict:
    """Dice between the labels of a raw dataset's cases and a trained nnU-Net's predictions on their images.

    Prediction is nnU-Net's own ``nnUNetPredictor`` (no mirroring, tile step 0.5, the ensemble of
    ``folds``; ``"all"`` for fold_all). Per case: mean foreground Dice over the labels present in the
    label or the prediction (1.0 when both are empty). Used for mask consistency (synthetic cases).
    Returns ``dict(mean_dice=, per_case={case: dice}, folds=, model=)``.
    """
    folds = tuple(folds)
    check_model_folder(model_training_output_dir, folds=folds, checkpoint_name=checkpoint_name)
    raw = as_raw(dataset)
    cases = select_cases(raw, identifiers, max_cases)
    if not cases:
        raise NnaugError(f"{raw.name} has no cases to check")
    predictor = load_predictor(model_training_output_dir, folds, device, checkpoint_name)
    per_case = {}
    from tqdm.auto import tqdm

    for case in tqdm(cases, desc=desc, disable=None if progress else True, leave=False):
        image, props, label = raw.read_native(case)  # read once per process: the report's other metrics share it
        per_case[case.identifier] = predicted_dice(predictor, image, props, label)
    return {"mean_dice": float(np.mean(list(per_case.values()))), "per_case": per_case,
            "folds": list(folds), "model": str(model_training_output_dir)}


def load_predictor(model_training_output_dir, folds=(0,), device: str = "cpu",
                   checkpoint_name: str = CHECKPOINT):
    """nnU-Net's own ``nnUNetPredictor`` for the ensemble of ``folds`` (no mirroring, tile step 0.5), loaded once.

    Raises a one-line :class:`NnaugError` for a folder nnU-Net cannot load
    (:func:`nnaug.nnunet_results.check_model_folder`, then nnU-Net's own loading).
    """
    import io

    import torch

    model_dir = Path(model_training_output_dir)
    folds = tuple(folds)
    check_model_folder(model_dir, folds=folds, checkpoint_name=checkpoint_name)

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    dev = torch.device(device)
    # nnU-Net prints chatter on CPU (into nnaug report's tables); the trainer class is looked up by
    # name while the checkpoint loads, so nnaug's trainers must be findable just then
    with contextlib.redirect_stdout(io.StringIO()), nnaug_trainers_env():
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=dev.type == "cuda", device=dev,
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        try:
            predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=folds, checkpoint_name=checkpoint_name)
        except Exception as exc:  # a truncated checkpoint, a trainer class nnU-Net cannot find, plans that lie
            from nnaug.io import one_line

            raise NnaugError(f"nnU-Net cannot load the model in {model_dir} (folds {', '.join(map(str, folds))}): "
                             f"{one_line(exc)} — train it again or give another model") from None
    return predictor


def predicted_dice(predictor, image: np.ndarray, properties: dict, label: np.ndarray) -> float:
    """Mean foreground Dice between ``label`` and the predictor's segmentation of ``image`` (1.0 when both are empty).

    ``image`` and ``properties`` as nnU-Net's reader/writer returns them (e.g. [C, 1, H, W] float32 for a
    2D PNG); ``label`` of the image's spatial shape.
    """
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        seg = predictor.predict_single_npy_array(image, properties, None, None, False)
    seg = np.asarray(seg).reshape(label.shape)
    dices = dice_per_label(label, seg)
    return float(np.mean(list(dices.values()))) if dices else 1.0


def predicted_dices(predictor, images: list[np.ndarray], properties: dict, labels: list[np.ndarray]) -> list[float]:
    """:func:`predicted_dice` for a batch of pairs that share ``properties``, with one loaded predictor.

    nnU-Net's predictor segments one case per call (its sliding window batches tiles, not cases), and
    this is the same call the report makes on the files, so a score here equals the report's.
    """
    import copy

    # nnU-Net's preprocessing writes crop/shape entries into the properties it is given
    return [predicted_dice(predictor, image, copy.deepcopy(properties), label) for image, label in zip(images, labels)]
