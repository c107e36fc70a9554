"""The ``publish`` step (``step.py``): put an assembled dataset and its generator into the DVC data registry as new
versions. Its helper: the dataset folder a version publishes (``assemble.py``)."""
