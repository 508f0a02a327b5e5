"""Train on real and synthetic cases together: the library side of ``nnUNetTrainer_nnaugMixed``.

Most papers add synthetic pairs to the training set instead of pretraining on them. The trainer keeps
nnU-Net's split of the real dataset: a fold trains on its real training cases plus every case of the
synthetic dataset (``NNAUG_SYNTHETIC``, or the newest one naming the real dataset, preprocessed with the real
plans exactly as for pretraining), and validates on its real validation cases only, so that its validation
Dice means what a real-only fold's does. Nothing is written into the real dataset's preprocessed folder
(nnU-Net's fold ``all`` lists that folder): the two folders are read as one dataset.
"""
from __future__ import annotations

from nnaug.errors import NnaugError
from nnaug.nnunet_pretraining import find_synthetic_dataset, preprocessed_data_folder, prepare_synthetic_for


class MixedDataset:
    """Two preprocessed datasets read as one, through what nnU-Net's data loader uses of a dataset
    (``identifiers``, ``load_case``); each case is loaded by the dataset it belongs to."""

    def __init__(self, real, synthetic):
        clash = sorted(set(real.identifiers) & set(synthetic.identifiers))
        if clash:
            raise NnaugError(f"the synthetic dataset has cases named like real ones ({', '.join(clash[:3])}): "
                             "rename them, or synthesize the set again with nnaug synthesize")
        self.parts = {**{i: real for i in real.identifiers}, **{i: synthetic for i in synthetic.identifiers}}
        self.identifiers = sorted(self.parts)
        self.source_folder = real.source_folder
        self.folder_with_segs_from_previous_stage = real.folder_with_segs_from_previous_stage

    def load_case(self, identifier):
        return self.parts[identifier].load_case(identifier)

    __getitem__ = load_case


def with_synthetic_cases(trainer, real_training) -> tuple[MixedDataset, dict]:
    """``real_training`` (a fold's real training cases) plus every case of the synthetic dataset for ``trainer``'s
    real dataset; returns the dataset and what it was made from (for the training record)."""
    folder = find_synthetic_dataset(trainer.plans_manager.dataset_name)
    prepared = prepare_synthetic_for(trainer, folder)
    synthetic = trainer.dataset_class(str(preprocessed_data_folder(prepared)), list(prepared.identifiers))
    mixed = MixedDataset(real_training, synthetic)
    made = {"synthetic_dataset": folder.name, "plans": prepared.plans_identifier, "signature": prepared.signature,
            "num_real": len(real_training.identifiers), "num_synthetic": len(synthetic.identifiers)}
    trainer.print_to_log_file(f"nnaug: training on {made['num_real']} real cases of fold {trainer.fold} and "
                              f"{made['num_synthetic']} synthetic cases of {folder.name} together; validating on the "
                              "fold's real cases")
    return mixed, made
