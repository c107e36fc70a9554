"""Networks and maths on torch, MONAI and numpy only (it runs on a bare GPU host): the generator families (one file
each, their configs in ``config.py``, listed in ``registry.py``), the judge classifier, the metrics, the training
driver and the checkpoint format."""
