"""nnaug's nnU-Net trainers: pretrain on synthetic data, fine-tune on real data.

Found by nnU-Net through ``nnUNet_extTrainer`` (``export nnUNet_extTrainer=$(nnaug trainers-path)``),
which imports this module by its bare name — hence the ``nnaug_`` prefix. Each class overrides as
little as it can; the library logic is in :mod:`nnaug.nnunet_pretraining`. See docs/trainers.md.

* ``nnUNetTrainer_nnaugPretrainFinetune`` — on the REAL dataset: pretrains on all cases of the
  synthetic dataset (fold ``all``, cached and shared by every fold), loads those weights like
  ``-pretrained_weights`` does, then fine-tunes on the fold — one process, one output folder.
* ``nnUNetTrainer_nnaugFinetune`` — the fine-tuning schedule only, for ``-pretrained_weights``.
* ``nnUNetTrainer_nnaugPretrain`` — the pretraining phase on its own (what the first one runs).
* ``nnUNetTrainer_nnaug`` — real-only baseline with the fine-tuning schedule.
* ``nnUNetTrainer_nnaugMixed`` — the same schedule on the fold's real cases plus the synthetic dataset
  together (:mod:`nnaug.nnunet_mixing`), validated on real cases only.
* ``*_5epochs`` — short fixed schedules (5 epochs x 10 iterations per phase) for tests and the example;
  ``nnUNetTrainer_nnaug_10epochs`` is the real-only run as long as pretraining + fine-tuning of those.

``NNAUG_SEED`` (an integer), when set, seeds Python's, NumPy's and torch's generators as a trainer
is made (``nnaug sweep`` sets it per repeat); nnU-Net itself does not seed its training.
"""
from __future__ import annotations

import functools
import os
import random
import sys
from os.path import join

import numpy as np
import torch
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnaug import nnunet_pretraining as _pt
from nnaug.errors import NnaugError

_FINETUNE, _PRETRAIN, _SHORT = _pt.FINETUNE_SCHEDULE, _pt.PRETRAIN_SCHEDULE, _pt.SHORT_SCHEDULE


def _seed_from_env() -> int | None:
    """``NNAUG_SEED``: seed random, numpy and torch (weights, patch sampling, augmentation with nnUNet_n_proc_DA=0)."""
    text = os.environ.get("NNAUG_SEED", "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise NnaugError(f"NNAUG_SEED must be a non-negative integer, got '{text}': fix or unset it")
    seed = int(text)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed


def _one_line_exit(method):
    """nnU-Net's command line prints a traceback for any exception; an NnaugError (bad input the user can fix)
    becomes one ``nnaug: error:`` line and exit code 2 instead, as in nnaug's own commands."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except NnaugError as exc:
            print(f"nnaug: error: {exc}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None
    return wrapper


def _weights_signature(network: torch.nn.Module) -> tuple[float, ...]:
    """A cheap fingerprint of the weights (sum per tensor): tells whether someone loaded others."""
    with torch.no_grad():
        return tuple(float(p.detach().float().sum()) for p in network.parameters())


def _honour_thread_limit(device: torch.device) -> None:
    """nnUNetv2_train gives a CPU run every core (torch.set_num_threads(cpu_count)). With OMP_NUM_THREADS set,
    use that many instead: several CPU workers of one nnaug sweep then share the cores instead of each
    taking all of them (two on 2 cores ran 6x slower per epoch)."""
    limit = os.environ.get("OMP_NUM_THREADS", "")
    if torch.device(device).type == "cpu" and limit.isdigit() and int(limit) > 0:
        torch.set_num_threads(int(limit))


class _NnaugTrainer(nnUNetTrainer):
    """Schedule from class defaults (+ NNAUG_* variables), atomic checkpoints, and a record of the cases used."""

    nnaug_phase = "finetune"
    nnaug_defaults = _FINETUNE
    nnaug_env_overrides = True  # the *_5epochs variants keep their fixed schedule

    @_one_line_exit
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        self.nnaug_seed = _seed_from_env()
        _honour_thread_limit(device)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.nnaug_schedule().apply(self)
        self.nnaug_extra_record = {}
        self.print_to_log_file(f"nnaug: {self.__class__.__name__}: {self.nnaug_schedule().describe()}")

    @classmethod
    def nnaug_schedule(cls) -> _pt.Schedule:
        if cls.nnaug_env_overrides:
            return _pt.schedule_from_env(cls.nnaug_phase, cls.nnaug_defaults)
        return cls.nnaug_defaults

    def initialize(self):
        super().initialize()
        self.nnaug_initial_weights = _weights_signature(self.network)

    def nnaug_weights_were_loaded(self) -> bool:
        """True when the weights changed between initialize() and training: nnUNetv2_train -pretrained_weights
        (nnU-Net loads them in between and does not tell the trainer)."""
        initial = getattr(self, "nnaug_initial_weights", None)
        return initial is not None and _weights_signature(self.network) != initial

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        self.nnaug_cases = (list(dataset_tr.identifiers), list(dataset_val.identifiers))
        return dataset_tr, dataset_val

    @_one_line_exit
    def run_training(self):
        super().run_training()

    def on_train_start(self):
        resumed = self.current_epoch > 0
        if resumed:  # --c: refused before nnU-Net's start-up writes anything
            _pt.refuse_changed_schedule(self.output_folder, self.nnaug_schedule(), self.nnaug_phase)
        super().on_train_start()
        extra = dict(self.nnaug_extra_record)
        if resumed:  # --c: keep what the first start recorded about the initial weights
            previous = _pt.load_json_or_none(join(self.output_folder, _pt.TRAINING_RECORD)) or {}
            extra = {**{k: previous[k] for k in ("pretrained_weights", "pretraining") if k in previous}, **extra}
        elif "pretrained_weights" not in extra and self.nnaug_weights_were_loaded():
            extra["pretrained_weights"] = "loaded by nnUNetv2_train -pretrained_weights"
        if self.nnaug_seed is not None:
            extra["seed"] = self.nnaug_seed
        record = _pt.training_record(self, *self.nnaug_cases, self.nnaug_schedule(), extra)
        _pt.write_json_atomic(join(self.output_folder, _pt.TRAINING_RECORD), record)

    def on_epoch_end(self):
        super().on_epoch_end()  # nnU-Net's epoch end; it counts current_epoch up last
        if self.local_rank == 0:  # what nnaug sweep's ETA reads, instead of parsing nnU-Net's log
            seconds = (self.logger.get_value("epoch_end_timestamps", step=-1)
                       - self.logger.get_value("epoch_start_timestamps", step=-1))
            _pt.write_json_atomic(join(self.output_folder, _pt.PROGRESS_FILE), {
                "phase": self.nnaug_phase, "epochs_done": self.current_epoch, "num_epochs": self.num_epochs,
                "iterations_per_epoch": self.num_iterations_per_epoch, "epoch_seconds": float(seconds)})

    def save_checkpoint(self, filename: str) -> None:
        # written beside and renamed into place: a killed run never leaves a truncated checkpoint.
        # nnU-Net writes on rank 0 only, so only rank 0 renames (another rank could move a half-written file).
        partial = filename + ".partial"
        super().save_checkpoint(partial)
        if self.local_rank == 0 and os.path.isfile(partial):
            os.replace(partial, filename)


class nnUNetTrainer_nnaugFinetune(_NnaugTrainer):
    """Fine-tuning schedule (150 epochs, lr 1e-2; NNAUG_FINETUNE_*), for ``-pretrained_weights CHECKPOINT``."""


class nnUNetTrainer_nnaug(_NnaugTrainer):
    """Real-only baseline: the fine-tuning schedule from random initialisation (compare with the pretrained run)."""


class nnUNetTrainer_nnaugPretrain(_NnaugTrainer):
    """The pretraining phase: nnU-Net's default schedule (1000 epochs, lr 1e-2; NNAUG_PRETRAIN_*), run on fold ``all``."""

    nnaug_phase = "pretrain"
    nnaug_defaults = _PRETRAIN


class nnUNetTrainer_nnaugPretrainFinetune(nnUNetTrainer_nnaugFinetune):
    """Pretrain on the synthetic dataset (cached per synthetic dataset + plans), then fine-tune on this fold."""

    nnaug_pretrain_trainer = nnUNetTrainer_nnaugPretrain

    @_one_line_exit
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        # refused before nnU-Net writes anything: the pretraining inside runs in this one process
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            raise NnaugError(f"{self.__class__.__name__} runs on one GPU only: drop -num_gpus, or pretrain with "
                             "nnUNetTrainer_nnaugPretrain and fine-tune with nnUNetTrainer_nnaugFinetune (see docs/trainers.md)")
        super().__init__(plans, configuration, fold, dataset_json, device)

    def on_train_start(self):
        if self.current_epoch == 0 and self.nnaug_weights_were_loaded():
            raise NnaugError(f"{self.__class__.__name__} makes its own pretrained weights: use "
                             "-tr nnUNetTrainer_nnaugFinetune with -pretrained_weights")
        if self.current_epoch == 0:  # a fresh fine-tuning; --c from a fine-tuning checkpoint skips this
            checkpoint, made = _pt.ensure_pretrained(self, self.nnaug_pretrain_trainer)
            if not self.was_initialized:
                self.initialize()
            load_pretrained_weights(self.network, str(checkpoint), verbose=False)
            self.print_to_log_file(f"nnaug: phase 2/2: fine-tuning {self.plans_manager.dataset_name} fold {self.fold} "
                                   f"from {checkpoint} ({self.nnaug_schedule().describe()})")
            self.nnaug_extra_record = {"pretrained_weights": str(checkpoint),
                                       "pretraining": {k: v for k, v in made.items() if k != "identifiers"}}
        else:
            self.print_to_log_file(f"nnaug: continuing the fine-tuning at epoch {self.current_epoch} "
                                   "(the pretrained weights are already in this checkpoint)")
        super().on_train_start()


class nnUNetTrainer_nnaugMixed(_NnaugTrainer):
    """Real and synthetic cases in one training (what most papers do instead of pretraining): the fold's real
    training cases plus every case of the synthetic dataset (NNAUG_SYNTHETIC), validated on the fold's real
    cases; the fine-tuning schedule (NNAUG_FINETUNE_*) from random initialisation, as nnUNetTrainer_nnaug."""

    def get_tr_and_val_datasets(self):
        from nnaug.nnunet_mixing import with_synthetic_cases

        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        dataset_tr, made = with_synthetic_cases(self, dataset_tr)
        self.nnaug_cases = (list(dataset_tr.identifiers), list(dataset_val.identifiers))
        self.nnaug_extra_record = {**self.nnaug_extra_record, "mixed_with": made}
        return dataset_tr, dataset_val


# ----------------------------------------------------------------------------- short schedules
class nnUNetTrainer_nnaugPretrain_5epochs(nnUNetTrainer_nnaugPretrain):
    nnaug_defaults = _SHORT
    nnaug_env_overrides = False


class nnUNetTrainer_nnaugFinetune_5epochs(nnUNetTrainer_nnaugFinetune):
    nnaug_defaults = _SHORT
    nnaug_env_overrides = False


class nnUNetTrainer_nnaug_5epochs(nnUNetTrainer_nnaug):
    nnaug_defaults = _SHORT
    nnaug_env_overrides = False


class nnUNetTrainer_nnaugMixed_5epochs(nnUNetTrainer_nnaugMixed):
    nnaug_defaults = _SHORT
    nnaug_env_overrides = False


class nnUNetTrainer_nnaug_10epochs(nnUNetTrainer_nnaug):
    """Real-only for as many iterations as the _5epochs pretraining + fine-tuning (compute-matched baseline)."""

    nnaug_defaults = _pt.SHORT_MATCHED_SCHEDULE
    nnaug_env_overrides = False


class nnUNetTrainer_nnaugPretrainFinetune_5epochs(nnUNetTrainer_nnaugPretrainFinetune):
    nnaug_defaults = _SHORT
    nnaug_env_overrides = False
    nnaug_pretrain_trainer = nnUNetTrainer_nnaugPretrain_5epochs
