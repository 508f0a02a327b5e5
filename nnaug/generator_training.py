"""The training run every generator shares (:class:`GeneratorTrainer`): accelerate, AdamW, LR schedule,
EMA, the GPU fast-path switches, checkpoints, resume.

Progress goes to tqdm, ``loss_curve.png`` and ``samples/``, and, with ``report_to`` (``--report-to
tensorboard``, or any tracker accelerate supports), to that tracker as diffusers' training examples
do: ``init_trackers``, then the loss terms and the learning rate every step and the contact sheet at
every checkpoint.

A generator is a :class:`~nnaug.generators.registry.TrainableGenerator`: one ``nn.Module`` whose
``forward(batch, step, max_steps, generator)`` returns ``(loss, logs)`` and which can ``export(folder)``
itself with ``save_pretrained`` and ``preview(labels, seeds)`` a few samples. This module owns everything else.

Randomness is derived from ``(seed, step, process)`` at every step (batch indices, augmentation,
timesteps, noise), so a run resumed from a checkpoint takes exactly the path of an uninterrupted
one: no RNG stream has to survive the interruption.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from nnaug.errors import NnaugError
from nnaug.choices import LR_SCHEDULES
from nnaug.io import write_json_atomic

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2
LOGS = "logs"  # tracker files (TensorBoard event files under logs/<run name>/)
# the pip package each of accelerate's trackers needs, where its name differs from the tracker's
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "comet_ml": "comet-ml"}


def check_report_to(name: str | None) -> None:
    """Refuse a tracker accelerate does not know, or whose package is not installed (accelerate would skip it silently)."""
    if not name:
        return
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    known = [t for t in LoggerType.list() if t != "all"]
    if name not in known:
        raise NnaugError(f"--report-to {name}: unknown tracker; choose one of {', '.join(known)}")
    if name not in [str(t) for t in get_available_trackers()]:
        raise NnaugError(f"--report-to {name} needs the {name} package: pip install {TRACKER_PACKAGES.get(name, name)}")


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    ema_decay: float = 0.9999
    ema_warmup: bool = False  # decay 1 - (1 + step)^-3/4, capped at ema_decay: short runs forget their start
    use_ema: bool = True
    checkpoint_every: int = 250
    seed: int = 0
    mixed_precision: str = "no"
    augment: bool = True
    max_grad_norm: float = 1.0  # 0: no clipping
    lr_schedule: str = "linear"  # after the warm-up: linear decay to 0, constant, or cosine (diffusers' schedules)
    preview_count: int = 4  # samples in each checkpoint's contact sheet; 0: none
    # GPU fast path, each off unless asked for (benchmarks/jdm_train_step.py measures them one by one)
    tf32: bool = False  # TF32 matmuls and convolutions for float32 (Ampere and newer)
    channels_last: bool = False  # NHWC weights and batches (tensor cores prefer them for convolutions)
    fused_adamw: bool = False  # one fused kernel for the AdamW update
    compile: bool = False  # torch.compile each network (diffusers ModelMixin) inside the generator
    report_to: str | None = None  # an accelerate tracker (tensorboard, wandb, ...); None: none
    extra: dict = field(default_factory=dict)


def step_generator(seed: int, step: int, process: int, device) -> torch.Generator:
    """A generator for one step of one process: same (seed, step, process) -> same draws."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step * 7919 + process * 104_729) % (2**63 - 1))
    return g


def augment_pairs(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
    """Random flips and 90-degree rotations, applied identically to each image and its label."""
    flips = torch.randint(0, 2, (images.shape[0], 2), generator=generator, device=generator.device)
    turns = torch.randint(0, 4, (images.shape[0],), generator=generator, device=generator.device)
    out_i, out_l = [], []
    for img, lab, (fh, fv), k in zip(images, labels, flips.tolist(), turns.tolist()):
        if fh:
            img, lab = img.flip(-1), lab.flip(-1)
        if fv:
            img, lab = img.flip(-2), lab.flip(-2)
        out_i.append(torch.rot90(img, k, (-2, -1)))
        out_l.append(torch.rot90(lab, k, (-2, -1)))
    return torch.stack(out_i), torch.stack(out_l)


@contextlib.contextmanager
def float32_precision(tf32: bool):
    """TF32 for float32 matmuls and convolutions inside the block only: nnaug leaves torch's globals as it found them."""
    if not tf32:
        yield
        return
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    matmul.fp32_precision = conv.fp32_precision = "tf32"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


def compile_networks(model: torch.nn.Module) -> list[str]:
    """``torch.compile`` every outermost diffusers network in ``model``, in place (parameter names and
    ``save_pretrained`` are unchanged); the loss code around them stays eager. Returns their names."""
    from diffusers import ModelMixin

    names = []
    for name, module in model.named_modules():
        if isinstance(module, ModelMixin) and not any(name.startswith(done + ".") for done in names):
            module.compile()
            names.append(name)
    return names


def data_fits_on(device: torch.device, *tensors: torch.Tensor, share: float = 0.25) -> bool:
    """Whether the training set takes at most ``share`` of the device's free memory (CPU: it is already there)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return sum(t.numel() * t.element_size() for t in tensors) <= share * free


def latest_checkpoint(output: Path) -> Path | None:
    folder = output / CHECKPOINTS
    done = sorted(p for p in folder.glob("step_*") if p.is_dir() and (p / "meta.json").is_file()) if folder.is_dir() else []
    return done[-1] if done else None


def check_output(output: Path, resume: bool, overwrite: bool) -> bool:
    """Refuse to clobber an earlier run unless asked; ``--resume`` needs something to resume.

    Only reads (every process of a multi-process run checks); returns whether an earlier run is there.
    """
    has_run = (output / "nnaug.json").exists() or latest_checkpoint(output) is not None
    if resume and latest_checkpoint(output) is None:
        raise NnaugError(f"--resume: {output} holds no checkpoint to resume from; run without --resume to start")
    if has_run and not (resume or overwrite):
        raise NnaugError(f"{output} already holds a generator: pass --resume to continue it or --overwrite to start over")
    return has_run


def prepare_output(output: Path, resume: bool, overwrite: bool) -> None:
    """:func:`check_output`, then make the folder (deleting an earlier run for ``overwrite``)."""
    has_run = check_output(output, resume, overwrite)
    if resume:
        return
    if has_run:
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)


class GeneratorTrainer:
    """Runs ``config.steps`` optimizer steps of ``model`` on in-memory (images, labels)."""

    def __init__(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig,
                 output: Path, info: dict, accelerator=None, progress: bool = True):
        from accelerate import Accelerator
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        self.config, self.output, self.info, self.progress = config, Path(output), dict(info), progress
        self.accelerator = accelerator or Accelerator(mixed_precision=config.mixed_precision)
        device = self.accelerator.device
        # The training set stays on the GPU when it fits (no copy per step); otherwise each batch is
        # gathered from memory on the CPU and copied.
        if data_fits_on(device, images, labels):
            images, labels = images.to(device), labels.to(device)
        self.images, self.labels = images, labels
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        model = model.to(device, memory_format=self.memory_format)  # before the optimizer: fused AdamW checks it
        if config.compile:
            compile_networks(model)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                                      fused=True if config.fused_adamw else None)
        schedule = LR_SCHEDULES[config.lr_schedule]
        lr_schedule = get_scheduler(schedule, optimizer, num_warmup_steps=config.warmup_steps,
                                    num_training_steps=config.steps)
        self.model, self.optimizer, self.lr_schedule = self.accelerator.prepare(model, optimizer, lr_schedule)
        self.params = params
        # foreach: one fused update over all parameters instead of a Python loop per tensor
        self.ema = EMAModel(params, decay=config.ema_decay, use_ema_warmup=config.ema_warmup,
                            power=3 / 4, foreach=True) if config.use_ema else None
        if self.ema is not None:
            self.ema.to(self.accelerator.device)
        self.step = 0
        self.history: list[list[float]] = []  # [step, loss, lr]

    # -- batches
    def batch(self, step: int, micro: int) -> tuple[dict, torch.Generator]:
        device = self.accelerator.device
        g = step_generator(self.config.seed, step * self.config.grad_accum + micro, self.accelerator.process_index, "cpu")
        idx = torch.randint(0, self.images.shape[0], (self.config.batch_size,), generator=g).to(self.images.device)
        images, labels = self.images[idx], self.labels[idx]
        if self.config.augment:
            images, labels = augment_pairs(images, labels, g)
        device_g = step_generator(self.config.seed + 1, step * self.config.grad_accum + micro,
                                  self.accelerator.process_index, device)
        images = images.to(device).contiguous(memory_format=self.memory_format)
        return {"image": images, "label": labels.to(device)}, device_g

    # -- one optimizer step
    def train_step(self, step: int) -> dict:
        with float32_precision(self.config.tf32):
            return self._train_step(step)

    def _train_step(self, step: int) -> dict:
        model, acc = self.model, self.accelerator
        logs_sum: dict[str, float] = {}
        for micro in range(self.config.grad_accum):
            batch, g = self.batch(step, micro)
            last = micro == self.config.grad_accum - 1
            context = acc.no_sync(model) if not last else contextlib.nullcontext()
            with context:
                loss, logs = model(batch, step, self.config.steps, g)
                acc.backward(loss / self.config.grad_accum)
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + float(v) / self.config.grad_accum
        if self.config.max_grad_norm:
            acc.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.optimizer.step()
        self.lr_schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.params)
        return logs_sum

    def run(self) -> None:
        from tqdm.auto import tqdm

        self.start_trackers()
        bar = tqdm(total=self.config.steps, initial=self.step, desc="training", unit="step", dynamic_ncols=True,
                   disable=not (self.progress and self.accelerator.is_main_process))
        while self.step < self.config.steps:
            logs = self.train_step(self.step)
            self.step += 1
            lr = self.lr_schedule.get_last_lr()[0]
            self.history.append([self.step, logs.get("loss", float("nan")), lr])
            self.accelerator.log({**{f"train/{k}": v for k, v in logs.items()}, "train/lr": lr}, step=self.step)
            bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}", lr=f"{lr:.2e}")
            bar.update(1)
            if not math.isfinite(logs.get("loss", 0.0)):
                raise NnaugError(f"the loss became {logs.get('loss')} at step {self.step}: lower --lr or use --mixed-precision no")
            if self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps:
                self.save_checkpoint()
        bar.close()
        for tracker in self.accelerator.trackers:  # not end_training(): that also ends the process group
            tracker.finish()

    # -- trackers
    def start_trackers(self) -> None:
        """``init_trackers`` when the accelerator was made with ``log_with``; the run's settings are its hyperparameters."""
        if not self.accelerator.log_with:
            return
        hparams = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
                   for k, v in asdict(self.config).items() if k != "extra" and v is not None}
        self.accelerator.init_trackers(self.output.name or "nnaug", config=hparams)

    def log_preview(self, sheet: Path) -> None:
        """The contact sheet to every tracker that takes images (TensorBoard: one NHWC image)."""
        if not self.accelerator.trackers:
            return
        import numpy as np
        from PIL import Image

        image = np.asarray(Image.open(sheet).convert("RGB"))
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({"samples": image[None]}, step=self.step, dataformats="NHWC")
            elif hasattr(tracker, "log_images"):
                tracker.log_images({"samples": [image]}, step=self.step)

    # -- checkpoints
    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_N`` atomically (temp folder, then rename), then export and preview."""
        acc = self.accelerator
        final = self.output / CHECKPOINTS / f"step_{self.step:07d}"
        tmp = final.parent / f".{final.name}.tmp"
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.parent.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        if acc.is_main_process:
            if self.ema is not None:
                torch.save(self.ema.state_dict(), tmp / "ema.pt")
            (tmp / "meta.json").write_text(json.dumps({"step": self.step, "history": self.history}))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in sorted(final.parent.glob("step_*"))[:-KEEP_CHECKPOINTS]:
                shutil.rmtree(old, ignore_errors=True)
            self.export()
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, folder: Path) -> None:
        self.accelerator.load_state(str(folder))
        if self.ema is not None:
            self.ema.load_state_dict(torch.load(folder / "ema.pt", map_location="cpu", weights_only=False))
            self.ema.to(self.accelerator.device)
        meta = json.loads((folder / "meta.json").read_text())
        self.step, self.history = meta["step"], meta["history"]

    # -- the generator folder
    def export(self) -> None:
        """EMA weights -> ``save_pretrained`` files, nnaug.json, contact sheet and loss curve."""
        from nnaug.visualize import contact_sheet, loss_curve

        model = self.accelerator.unwrap_model(self.model)
        if self.ema is not None:
            self.ema.store(self.params)
            self.ema.copy_to(self.params)
        try:
            model.export(self.output)
            if self.config.preview_count:
                cond = self.labels[: self.config.preview_count].to(self.accelerator.device)
                seeds = list(range(cond.shape[0]))  # a dataset smaller than preview_count previews what it has
                images, labels = model.preview(cond, seeds)
                sheet = contact_sheet(images.cpu(), labels.cpu(), self.output / "samples" / f"step_{self.step:07d}.png")
                self.log_preview(sheet)
        finally:
            if self.ema is not None:
                self.ema.restore(self.params)
        loss_curve(self.history, self.output / "loss_curve.png")
        info = {**self.info, "steps_trained": self.step, "train_config": asdict(self.config),
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json_atomic(self.output / "nnaug.json", info)
        (self.output / "training_log.json").write_text(json.dumps(self.history))
