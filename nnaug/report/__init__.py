"""``nnaug report``: fidelity of each synthetic dataset made from a real dataset, and the Dice it bought.

Reads only what exists: the raw datasets under ``$nnUNet_raw`` (the real one and every dataset whose
``nnaug_provenance.json`` names it as source) and nnU-Net's validation ``summary.json`` files under
``$nnUNet_results/<Dataset>/<Trainer>__<Plans>__<config>/fold_<f>/``. Never trains. Writes
``$nnUNet_results/nnaug/<Dataset>/report.{md,json,html,png}`` and the pictures report.html embeds.

By layer, each importing only those above it:
:mod:`~nnaug.report.collect` (what exists: Dice, the latest sweep) ->
:mod:`~nnaug.report.words` (numbers as words and cells) -> :mod:`~nnaug.report.tables` (one table model) ->
:mod:`~nnaug.report.figures` -> :mod:`~nnaug.report.realism` (mask realism and coverage: arrays, tables,
pictures) -> :mod:`~nnaug.report.compute` (every metric of every synthetic set) ->
:mod:`~nnaug.report.markdown`, :mod:`~nnaug.report.html` (the same tables rendered twice) ->
:mod:`~nnaug.report.write`.
"""
from nnaug.report.compute import build_report
from nnaug.report.markdown import to_markdown
from nnaug.report.write import write_report

__all__ = ["build_report", "to_markdown", "write_report"]
