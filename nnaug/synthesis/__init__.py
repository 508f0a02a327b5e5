"""``nnaug synthesize``: a trained generator -> a new nnU-Net raw dataset of synthetic pairs.

One module per step, each importing only those above it:

- :mod:`~nnaug.synthesis.options` what the user asked (:class:`SynthesisOptions`), checked;
- :mod:`~nnaug.synthesis.plan` everything that decides the output bytes (the plan, its identity, the
  per-case seeds, a filter's model and threshold);
- :mod:`~nnaug.synthesis.work_folder` the hidden ``.DatasetXXX_Name.partial`` folder a run writes into:
  its plan file, the done markers of its batches, writing a pair, and finishing (provenance,
  dataset.json, contact sheet, rename into place); :class:`SynthesisRun` is what one run carries;
- :mod:`~nnaug.synthesis.sampling` one batch of cases from the generator, at the dataset's size;
- :mod:`~nnaug.synthesis.plain` and :mod:`~nnaug.synthesis.filtered` (``--min-consistency``) the two
  kinds of run, on top of the work folder;
- :mod:`~nnaug.synthesis.run` :func:`synthesize`: checks, the target's ID, and the run.
"""
from nnaug.synthesis.options import SynthesisOptions
from nnaug.synthesis.run import synthesize

__all__ = ["SynthesisOptions", "synthesize"]
