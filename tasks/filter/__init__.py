"""The ``filter`` step (``step.py``): score every synthetic image, reject with a reason, top up short classes. Its
helpers: the real reference it scores against (``reference.py``) and the scoring shards (``scoring.py``)."""
