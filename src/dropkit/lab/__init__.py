"""The dropkit lab: train a model with and without dropout, sweep rates, report the gap.

Modules (none is imported by ``import dropkit``; the lab needs the ``lab`` extra:
scikit-learn, matplotlib, rich):

* :mod:`dropkit.lab.datasets` -- ``load_dataset(name, ...)``: digits, overfit, mnist1d,
  fashion-mnist, mnist (checksummed downloads, ``data_dir=`` for IDX files on disk).
* :mod:`dropkit.lab.models` -- ``build_model(name, in_shape, num_classes, p, variant=...)``:
  mlp, overfit-mlp, cnn, lstm, built from dropkit's dropout layers.
* :mod:`dropkit.lab.train` -- ``train_run(spec, data, run_dir)``: one resumable training run
  (Adam, per-epoch metrics, atomic checkpoints, optional DistributedDataParallel).
* :mod:`dropkit.lab.experiment` -- compare / sweep plans, run folders, ``--jobs`` processes.
* :mod:`dropkit.lab.report` -- tables, the Markdown report and PNG plots of a run folder.

The command line is ``dropkit compare``, ``dropkit sweep`` and ``dropkit report``
(see ``docs/lab.md``).
"""

__all__: list[str] = []
