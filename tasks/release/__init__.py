"""The ``release`` step (``step.py``) of ``synthaug anonymize``: the synthetic-only release, after the privacy gate.
Its helper: the release formats (``export.py``: PNG, 16-bit PNG, NIfTI, DICOM)."""
