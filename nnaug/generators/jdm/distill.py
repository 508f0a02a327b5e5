"""Few-step distillation of a diffusion JDM: a student that samples in k DDIM steps what its teacher
samples in many.

One round of progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling
of Diffusion Models", arXiv:2202.00512), in which the teacher walks each of the student's k intervals
with several DDIM steps of its own instead of two (as TRACT does, Berthelot et al. 2023,
arXiv:2303.04248): one training run instead of log2(1000 / k) halvings.

* The student starts as a copy of the teacher. Its k steps are the ones ``nnaug synthesize`` takes
  with ``--sampler ddim --steps k``: the trailing timesteps ``t_0 = T-1 > ... > t_{k-1}``, and the last
  step ends on x0 (``abar = 1``). So a distilled folder is an ordinary JDM folder that samples with
  DDIM k by default.
* Training draws a real pair x0, an interval ``i`` and noise ``eps``; ``x_t = q(x_{t_i} | x0)``. The teacher
  takes ``m`` deterministic DDIM steps (clipped x0, as the sampler) from ``t_i`` to ``t_{i+1}``, landing at
  ``x_s``. The student's one DDIM step must land there too: the x0 that makes it (below, ``x0_for_step``)
  gives the v (or epsilon) target, regressed with the MSE of the training objective.
* Mask-conditioned sampling keeps the mask channels on the true mask's noising path and replaces their
  prediction with the exact one (``nnaug.generators.jdm.sampling``). Part of each batch (``mask_share``)
  is distilled that way: the teacher walks with the exact mask prediction, and the student is taught the
  image channels only. The rest is joint: every channel follows the teacher.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch

from nnaug.errors import NnaugError
from nnaug.generators.jdm.sampling import oracle_mask_output
from nnaug.masks import encode_labels
from nnaug.parameterisation import eps_from_x0, q_sample, target
from nnaug.scheduler_variants import ddim_x0_eps

SAMPLER = "ddim"  # the sampler a distilled JDM is made for (its steps: settings["distill"]["student_steps"])
# teacher_steps 48: on Kvasir the student of a 24-step walk stayed at KID 0.13x the reference's distance to the
# data however long it trained; of a 48-step walk it reached 0.005x (docs/train-generator.md, "Distilled students")
DEFAULTS = dict(student_steps=4, teacher_steps=48, mask_share=0.5)
# The optimisation of a distillation run, over the teacher's settings: from the teacher's weights, a lower
# lr than a tiny JDM's from-scratch 2e-3 decaying to 0; EMA as the presets.
TRAINING = dict(steps=400, lr=5e-4, warmup_steps=20, lr_schedule="linear", checkpoint_every=100, ema_decay=0.999,
                ema_warmup=True)


def student_timesteps(scheduler_config: dict, student_steps: int) -> list[int]:
    """``t_0 > ... > t_{k-1}`` of DDIM in ``student_steps`` steps (nnaug.samplers' spacing), then -1 for x0."""
    from nnaug.samplers import make_scheduler

    scheduler = make_scheduler(SAMPLER, scheduler_config)
    scheduler.set_timesteps(student_steps)
    return [int(t) for t in scheduler.timesteps] + [-1]


def alpha_bar(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``abar_t`` per sample as ``[B, 1, 1, 1]``; ``t = -1`` is the clean end (``abar = 1``)."""
    a = torch.where(t >= 0, alphas_cumprod[t.clamp(min=0)], torch.ones_like(t, dtype=alphas_cumprod.dtype))
    return a.view(-1, 1, 1, 1)


def ddim_step(x: torch.Tensor, output: torch.Tensor, a_t: torch.Tensor, a_s: torch.Tensor, prediction_type: str,
              clip: float | None = 1.0) -> torch.Tensor:
    """Deterministic DDIM from ``abar_t`` to ``abar_s`` (per sample), as ``nnaug``'s DDIM sampler steps."""
    x0, eps = ddim_x0_eps(x, output, a_t, prediction_type, clip)
    return q_sample(x0, eps, a_s)


def x0_for_step(x_t: torch.Tensor, x_s: torch.Tensor, a_t: torch.Tensor, a_s: torch.Tensor) -> torch.Tensor:
    """The x0 whose (unclipped) DDIM step from ``x_t`` lands on ``x_s``: solve
    ``x_s = sqrt(a_s) x0 + sqrt(1 - a_s) (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)`` for x0
    (Salimans & Ho 2022, Algorithm 2). At the clean end (``a_s = 1``) it is ``x_s``."""
    ratio = ((1 - a_s) / (1 - a_t)).sqrt()
    return (x_s - ratio * x_t) / (a_s.sqrt() - ratio * a_t.sqrt())


def target_for(x_t: torch.Tensor, x0: torch.Tensor, a_t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """What the network predicts at ``x_t`` for the clean estimate ``x0`` (epsilon or v)."""
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"distillation needs an epsilon or v prediction, not {prediction_type}")
    return target(prediction_type, x0, eps_from_x0(x_t, x0, a_t), a_t)


class TeacherWalk:
    """The teacher's ``m`` DDIM steps from ``t`` to ``s`` (per sample), mask channels exact where conditioned."""

    def __init__(self, unet, alphas_cumprod: torch.Tensor, prediction_type: str, channels: int, image_channels: int):
        self.unet, self.alphas_cumprod, self.prediction_type = unet, alphas_cumprod, prediction_type
        self.channels, self.image_channels = channels, image_channels

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, substeps: int, mask: torch.Tensor,
                 mask_noise: torch.Tensor, conditioned: torch.Tensor) -> torch.Tensor:
        for j in range(substeps):
            # integer timesteps from t to s in equal parts (s = -1: the last part ends on x0)
            here = t - torch.div((t - s) * j, substeps, rounding_mode="floor")
            there = t - torch.div((t - s) * (j + 1), substeps, rounding_mode="floor")
            a_here, a_there = alpha_bar(self.alphas_cumprod, here), alpha_bar(self.alphas_cumprod, there)
            out = self.unet(x, here).sample.float()[:, : self.channels]
            exact = oracle_mask_output(mask, mask_noise, a_here, self.prediction_type)
            out[:, self.image_channels:] = torch.where(conditioned.view(-1, 1, 1, 1), exact, out[:, self.image_channels:])
            x = ddim_step(x, out, a_here, a_there, self.prediction_type)
        return x


def check_teacher(info: dict, folder: Path) -> None:
    """A diffusion JDM with an epsilon or v prediction can be distilled; say in one line what else is wrong."""
    if info.get("model") != "jdm":
        raise NnaugError(f"{folder} is a {info.get('model')} generator: nnaug distills JDM generators only")
    settings = info.get("settings", {})
    if settings.get("objective", "diffusion") != "diffusion":
        raise NnaugError(f"{folder} is a flow-matching JDM: distillation here follows DDIM steps of a diffusion JDM "
                         "(train one with --objective diffusion)")
    if settings.get("distill"):
        raise NnaugError(f"{folder} is itself distilled ({settings['distill']['student_steps']} steps): distill its "
                         f"teacher {settings['distill']['teacher']} instead")


def build_distillation(settings: dict, image_channels: int, mask_channels: int):
    """The trainable student for ``settings["distill"]`` (teacher folder, student steps, teacher steps)."""
    from nnaug.generators.folder import load_generator

    distill = settings["distill"]
    teacher_dir = Path(distill["teacher"])
    if not (teacher_dir / "nnaug.json").is_file():
        raise NnaugError(f"the teacher {teacher_dir} is gone or incomplete: distillation reads its weights; restore it")
    loaded = load_generator(teacher_dir)  # the one loading of a generator folder: bad weights are one error line
    teacher = loaded.unet.eval().requires_grad_(False)
    return DistilledJDM(copy.deepcopy(teacher).train().requires_grad_(True), teacher, image_channels, mask_channels,
                        dict(loaded.scheduler_config), **{k: distill[k] for k in DEFAULTS})


class DistilledJDM(torch.nn.Module):
    """The student (``unet``, trained) and the frozen teacher; the loss of one distillation batch."""

    def __init__(self, unet, teacher, image_channels: int, mask_channels: int, scheduler_config: dict,
                 student_steps: int, teacher_steps: int, mask_share: float):
        super().__init__()
        from diffusers import DDPMScheduler

        self.unet, self.teacher = unet, teacher
        self.image_channels, self.channels = image_channels, image_channels + mask_channels
        self.prediction_type = scheduler_config["prediction_type"]
        self.scheduler_config = scheduler_config
        self.timesteps = torch.tensor(student_timesteps(scheduler_config, student_steps))
        self.student_steps, self.mask_share = student_steps, mask_share
        self.substeps = max(1, math.ceil(teacher_steps / student_steps))
        self.register_buffer("alphas_cumprod", DDPMScheduler.from_config(scheduler_config).alphas_cumprod.float(),
                             persistent=False)

    def forward(self, batch: dict, step: int, max_steps: int, generator: torch.Generator):
        mask_channels = self.channels - self.image_channels
        x0 = torch.cat([batch["image"], encode_labels(batch["label"], mask_channels).to(batch["image"].dtype)], dim=1)
        n, device = x0.shape[0], x0.device
        interval = torch.randint(0, self.student_steps, (n,), device=device, generator=generator)
        noise = torch.randn(x0.shape, device=device, dtype=x0.dtype, generator=generator)
        conditioned = torch.rand(n, device=device, generator=generator) < self.mask_share
        steps = self.timesteps.to(device)
        t, s = steps[interval], steps[interval + 1]
        a_t, a_s = alpha_bar(self.alphas_cumprod, t), alpha_bar(self.alphas_cumprod, s)
        x_t = q_sample(x0, noise, a_t)
        walk = TeacherWalk(self.teacher, self.alphas_cumprod, self.prediction_type, self.channels, self.image_channels)
        mask, mask_noise = x0[:, self.image_channels:], noise[:, self.image_channels:]
        x_s = walk(x_t, t, s, self.substeps, mask, mask_noise, conditioned)
        target = target_for(x_t, x0_for_step(x_t, x_s, a_t, a_s), a_t, self.prediction_type)
        out = self.unet(x_t, t).sample.float()[:, : self.channels]
        error = (out - target) ** 2
        # conditioned samples: the mask channels' prediction is replaced at sampling time, so only the image counts
        weight = torch.ones_like(error)
        weight[:, self.image_channels:] = (~conditioned).float().view(-1, 1, 1, 1)
        loss = (error * weight).sum() / weight.sum()
        return loss, {"loss": loss.item()}

    def export(self, folder: Path) -> None:
        """The student alone, as an ordinary JDM folder (the teacher's noise schedule)."""
        from diffusers import DDPMScheduler

        self.unet.save_pretrained(folder)
        DDPMScheduler.from_config(self.scheduler_config).save_pretrained(folder)

    @torch.no_grad()
    def preview(self, labels: torch.Tensor, seeds: list[int]):
        """Joint samples in the student's own k DDIM steps."""
        from nnaug.generators.jdm.sampling import sample
        from nnaug.masks import decode_channels
        from nnaug.samplers import make_scheduler

        was_training = self.unet.training
        self.unet.eval()
        try:
            x = sample(self.unet, make_scheduler(SAMPLER, self.scheduler_config), seeds, self.student_steps,
                       self.image_channels, self.channels - self.image_channels)
        finally:
            self.unet.train(was_training)
        return x[:, : self.image_channels], decode_channels(x[:, self.image_channels:])
