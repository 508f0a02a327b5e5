"""--report-to: both generators log loss, lr and the contact sheets to an accelerate tracker."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from accelerate.tracking import GeneralTracker

from conftest import assert_one_line_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class RecordingTracker(GeneralTracker):
    """A real accelerate tracker (a GeneralTracker subclass) that keeps what it is given."""

    name = "recording"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self):
        super().__init__()
        self.config, self.scalars, self.images, self.finished = None, [], [], False

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values: dict):
        self.config = dict(values)

    def log(self, values: dict, step=None, **kwargs):
        self.scalars.append((step, dict(values)))

    def log_images(self, values: dict, step=None, **kwargs):
        self.images.append((step, {k: [v.shape for v in vs] for k, vs in values.items()}))

    def finish(self):
        self.finished = True


def _models():
    from nnaug.generators.jdm.model import build_jdm_model
    from nnaug.generators.jdm.presets import PRESETS as JDM
    from nnaug.generators.siamese.model import build_siamese_model
    from nnaug.generators.siamese.presets import PRESETS as SIAMESE

    small = dict(resolution=16, channels=(8, 16), attention_resolutions=(8,))
    return {"jdm": lambda: build_jdm_model({**JDM["tiny"], **small, "attention_head_dim": 4}, None, 3, 2),
            "siamese": lambda: build_siamese_model({**SIAMESE["tiny"], **small, "dhi_channels": (4, 8),
                                                    "preview_steps": 2}, None, 3, 2)}


@pytest.mark.parametrize("model", [pytest.param("jdm", marks=pytest.mark.slow), "siamese"])  # one shared trainer
def test_trainer_logs_loss_lr_and_previews(tmp_path, model):
    from accelerate import Accelerator

    from nnaug.generator_training import GeneratorTrainer, TrainConfig

    tracker = RecordingTracker()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    labels = torch.randint(0, 3, (4, 16, 16), generator=g)
    config = TrainConfig(steps=3, batch_size=2, lr=1e-3, warmup_steps=2, checkpoint_every=2, preview_count=2,
                         report_to="recording")
    trainer = GeneratorTrainer(_models()[model](), images, labels, config, tmp_path / model, {}, progress=False,
                               accelerator=Accelerator(cpu=True, log_with=[tracker]))
    trainer.run()
    assert tracker.config["steps"] == 3 and tracker.config["lr"] == 1e-3 and tracker.finished
    assert [step for step, _ in tracker.scalars] == [1, 2, 3]
    lrs = [values["train/lr"] for _, values in tracker.scalars]
    assert lrs == [row[2] for row in trainer.history] and lrs[0] < lrs[1]  # the warm-up, as the schedule set it
    assert [values["train/loss"] for _, values in tracker.scalars] == [row[1] for row in trainer.history]
    if model == "siamese":
        assert {"train/L0", "train/L1", "train/L2", "train/L3"} <= set(tracker.scalars[-1][1])
    # one contact sheet per checkpoint (step 2 and the last step), as in samples/
    assert [step for step, _ in tracker.images] == [2, 3]
    assert len(list((tmp_path / model / "samples").glob("*.png"))) == 2
    (shape,) = tracker.images[0][1]["samples"]
    assert len(shape) == 3 and shape[2] == 3 and shape[0] > 16  # one H x W x 3 image of the whole sheet


def test_report_to_without_its_package_or_unknown_is_one_line(nnunet_env, run_cli):
    assert run_cli("example-dataset", "-d", 999, "--num-cases", 2).exit_code == 0
    base = ["train-generator", "999", "--model", "siamese", "--preset", "tiny", "--steps", 1, "--cpu"]
    assert_one_line_error(run_cli(*base, "--report-to", "nosuchtracker"), "unknown tracker", "tensorboard")
    if importlib.util.find_spec("tensorboard") is None:
        assert_one_line_error(run_cli(*base, "--report-to", "tensorboard"), "pip install tensorboard")
    assert not (nnunet_env["results"] / "nnaug").exists()  # refused before anything was written


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_event_files(nnunet_env, run_cli):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert run_cli("example-dataset", "-d", 999, "--num-cases", 2).exit_code == 0
    out = nnunet_env["results"] / "gen"
    result = run_cli("train-generator", "999", "--model", "siamese", "--preset", "tiny", "--resolution", 16,
                     "--channels", "8,16", "--attention-resolutions", "8", "--batch-size", 2, "--steps", 2,
                     "--checkpoint-every", 2, "--cpu", "--output", out, "--report-to", "tensorboard")
    assert result.exit_code == 0, result.output
    (run,) = [p.parent for p in (out / "logs").rglob("events.out.tfevents.*") if p.parent.name == "gen"]
    events = EventAccumulator(str(run)).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert "samples" in events.Tags()["images"]
