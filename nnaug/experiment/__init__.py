"""nnaug's experiment pipeline (``nnaug sweep``), one module per stage:

* :mod:`~nnaug.experiment.plan`: budgets, arms, runs and their folders, from the inputs alone;
* :mod:`~nnaug.experiment.synthetic_sets`: the synthetic datasets the pretrain arms need;
* :mod:`~nnaug.experiment.run`: the only place nnU-Net is started; several workers share the runs;
* :mod:`~nnaug.experiment.evaluate`: per-case Dice, fidelity of the synthetic sets, statistics;
* :mod:`~nnaug.experiment.render`: sweep.md, sweep.png and sweep.json from the result.

:mod:`nnaug.sweep` strings them together.
"""
