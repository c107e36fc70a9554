"""The ``train`` step (``step.py``): train or fine-tune the generator on the real train split. Its helpers: pretrained
starting points from a local folder (``pretrained.py``) and differentially private training (``private.py``)."""
