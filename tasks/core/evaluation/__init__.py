"""Downstream utility, shared by the evaluate step and ``synthaug tune``: the training conditions and their scores,
the inputs they read, the synthetic recipe, the CPU process pool, the utility gate and the charts."""
