"""The shared core the steps stand on, in rooms by job (a helper used by one step lives beside that step instead):

- ``errors``, ``logs``, ``labels``, ``render`` (the Jinja templates of every HTML and Markdown output), ``sampling``
  (images from a checkpoint, one RNG per image);
- ``io``: atomic files and hashes, images, the manifest, shards of work, locks, the files steps read from each other;
- ``params``: one module per section of params.yaml (no torch);
- ``sources``: image folders, tables, ``.npz``, DICOM/NIfTI, git/DVC revisions, the bundled example;
- ``scoring``: the judge's feature space and the per-image rules of the filter and the privacy gate;
- ``evaluation``: downstream utility, its inputs, the synthetic recipe, the process pool, the utility gate, charts;
- ``publishing``: the data registry, git/DVC runs, cards, generator artifacts;
- ``privacy``: what an anonymized release may claim (the audit record, differential privacy, TSTR).

The core imports no step (an import-linter contract in pyproject.toml).
"""
