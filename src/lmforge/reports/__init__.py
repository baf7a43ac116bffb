"""Pictures and markdown reports of runs and sweeps.

* :mod:`.plots`: the figures (loss, validation metrics, learning rate, confusion matrix, F1 per entity
  type, a sweep's metric per job), drawn with matplotlib's object-oriented API on the Agg canvas: no
  display, no ``pyplot`` state, and matplotlib is imported only when a figure is drawn;
* :mod:`.run_report`: ``<run>/report.md``: the command, the config's key values, the final metrics, the
  pictures, the export and how to load it;
* :mod:`.sweep_report`: ``<sweep dir>/sweep_report.md`` and ``plots/sweep.png`` after ``-m``, written by a
  Hydra callback (``hydra.callbacks.sweep_report``) after every job and at the end of the sweep.
"""
