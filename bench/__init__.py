"""Benchmarks of the generator families: training and sampling throughput, and sample quality.

``python -m bench`` runs them all; ``python -m bench --help`` lists the options. Results go to ``bench/results/``
as JSON (with the machine they ran on) and are printed as markdown tables; docs/BENCHMARKS.md records them.
"""
