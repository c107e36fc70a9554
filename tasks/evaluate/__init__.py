"""The ``evaluate`` step (``step.py``): set metrics and downstream utility of the accepted synthetic images. Its
helpers: the set metrics (``set_metrics.py``) and the headline numbers ``dvc metrics show`` prints (``headline.py``)."""
