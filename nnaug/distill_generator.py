"""``nnaug distill-generator``: a trained diffusion JDM -> a student folder that samples in a few DDIM steps.

The maths is :mod:`nnaug.generators.jdm.distill`; the run is an ordinary generator training
(:func:`nnaug.train_generator.train_generator`: the same output rules, checkpoints, EMA and ``--resume``)
whose settings are the teacher's, the optimisation of ``distill.TRAINING`` and ``settings["distill"]``.
"""
from __future__ import annotations

import json
from pathlib import Path

from nnaug.errors import NnaugError
from nnaug.generators.jdm.distill import DEFAULTS, SAMPLER, TRAINING, check_teacher
from nnaug.train_generator import RUN_CONFIG, train_generator


def default_output(teacher: Path, student_steps: int) -> Path:
    return teacher.parent / f"{teacher.name}_{SAMPLER}{student_steps}"


def latest_teacher(dataset_name: str) -> Path:
    """The latest generator trained on the dataset; when that is a student, its teacher."""
    from nnaug.generators import find_latest_generator, read_info

    latest = find_latest_generator(dataset_name)
    distilled = read_info(latest).get("settings", {}).get("distill")
    return Path(distilled["teacher"]) if distilled else latest


def distill_options(info: dict, teacher: Path, given: dict) -> dict:
    """``settings["distill"]``: the teacher and the user's choices over DEFAULTS, checked."""
    options = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    if options["teacher_steps"] < options["student_steps"]:
        raise NnaugError(f"--teacher-steps {options['teacher_steps']} is fewer than --student-steps "
                         f"{options['student_steps']}: the teacher must take at least one step per student step")
    return {**options, "teacher": str(teacher.resolve()), "teacher_steps_trained": info.get("steps_trained")}


def _refuse_other_distillation(output: Path, given: dict) -> None:
    """``--resume`` continues the distillation it started: the student and teacher steps cannot change."""
    saved = json.loads((output / RUN_CONFIG).read_text())["settings"]["distill"]
    changed = [f"--{k.replace('_', '-')} {v} (run: {saved[k]})" for k, v in given.items()
               if v is not None and v != saved[k]]
    if changed:
        raise NnaugError(f"--resume continues the distillation in {output} as it started; these differ: "
                         f"{', '.join(changed)} — drop them, or distill again with --overwrite or another --output")


def distill_generator(dataset: str, teacher: Path | None = None, output: Path | None = None, resume: bool = False,
                      overwrite: bool = False, distill: dict | None = None, overrides: dict | None = None,
                      progress: bool = True, cpu: bool = False) -> Path:
    """Distill ``teacher`` (default: :func:`latest_teacher`) on ``dataset``'s pairs;
    returns the student's generator folder. ``distill``: student_steps, teacher_steps, mask_share (None: default);
    ``overrides``: training settings (steps, lr, batch_size, ...) over ``distill.TRAINING``."""
    from nnaug.dataset import load_raw_dataset
    from nnaug.generators import read_info

    raw = load_raw_dataset(dataset)
    teacher = Path(teacher) if teacher else latest_teacher(raw.name)
    info = read_info(teacher)
    if not isinstance(info.get("settings"), dict) or not isinstance(info.get("preset"), str):
        raise NnaugError(f"{teacher / 'nnaug.json'} lacks the teacher's training settings (settings, preset), which a "
                         "distillation starts from: give a generator folder written by `nnaug train-generator`")
    check_teacher(info, teacher)
    if info["source_dataset"] != raw.name:
        raise NnaugError(f"the teacher {teacher} was trained on {info['source_dataset']}, not {raw.name}: distill it on "
                         "its own dataset (the student learns the teacher's steps from that dataset's images)")
    given = {k: (distill or {}).get(k) for k in DEFAULTS}
    student_steps = given["student_steps"] or DEFAULTS["student_steps"]
    output = Path(output) if output else default_output(teacher, student_steps)
    user = {k: v for k, v in (overrides or {}).items() if v is not None}
    if resume and (output / RUN_CONFIG).is_file():
        _refuse_other_distillation(output, given)
        return train_generator(raw.name, model="jdm", preset=info["preset"], output=output, resume=True,
                               overrides=user, progress=progress, cpu=cpu)
    settings = {**info["settings"], **TRAINING, **user, "distill": distill_options(info, teacher, given)}
    return train_generator(raw.name, model="jdm", preset=info["preset"], output=output, resume=resume,
                           overwrite=overwrite, overrides=settings, progress=progress, cpu=cpu)
