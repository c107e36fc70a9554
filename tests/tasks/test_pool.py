"""Classifier runs spread over processes (tasks/core/evaluation/pool.py): how many, what a worker holds, errors."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch

from synthaug.models.config import JudgeConfig
from synthaug.tasks.core.evaluation.downstream import EvalData
from synthaug.tasks.core.evaluation.pool import nbytes, run_jobs, worker_count
from synthaug.tasks.core.evaluation.recipe import run_conditions
from synthaug.tasks.core.params.evaluate import EvaluateParams
from tests.markers import slow


def test_worker_count_is_capped_by_runs_and_memory() -> None:
    assert worker_count(4, 3, 1) == 3  # never more processes than runs
    assert worker_count(2, 10, 1) == 2
    assert worker_count(8, 10, 2**62) == 1  # copies of the data would not fit: one process
    assert worker_count(None, 10, 1, work=5.0) == 1  # under a minute of work: not worth starting processes
    assert worker_count(None, 10, 1, work=600.0) == min(10, len(os.sched_getaffinity(0)))
    assert worker_count(2, 10, 1, work=5.0) == 2  # asked for explicitly


def test_nbytes_counts_the_arrays_a_worker_copies() -> None:
    frame = pd.DataFrame({"a": np.arange(4, dtype=np.int64)})
    shared = {"x": torch.zeros(10, 3), "y": [np.zeros(5, dtype=np.float64), (torch.zeros(2, dtype=torch.int64),)],
              "frame": frame, "n": 7}
    assert nbytes(shared) == 120 + 40 + 16 + int(frame.memory_usage(deep=True).sum())


def _tiny_data() -> EvalData:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, 8, 8, generator=g) * 2 - 1
    y = torch.arange(24) % 2
    empty = torch.empty(0, 1, 8, 8)
    none = torch.empty(0, dtype=torch.int64)
    return EvalData(["a", "b"], x, y, x[:4], y[:4], x[:8], y[:8], empty, none, empty, none, pd.DataFrame())


@slow
def test_a_failing_run_raises_in_the_caller_with_its_message() -> None:
    params = EvaluateParams(classifier=JudgeConfig(width=4, feature_dim=4, steps=2, batch_size=8))
    data = _tiny_data()
    jobs = [(0, "real_oversampled", 0), (0, "no_such_condition", 1)]
    with pytest.raises(ValueError, match="unknown condition 'no_such_condition'"):
        run_conditions([(data, None, params)], jobs, None, ["a"], torch.device("cpu"), processes=2)


def test_one_process_runs_here_with_one_thread_and_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    seen = run_jobs(_threads, [(1,), (2,)], "shared", workers=1, device=torch.device("cpu"))
    assert seen == [("shared", 1, 1), ("shared", 2, 1)]
    assert torch.get_num_threads() == before


def _threads(shared: str, job: int) -> tuple[str, int, int]:
    return shared, job, torch.get_num_threads()
