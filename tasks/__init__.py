"""The pipeline's steps (one module or package each, never importing another step) on the shared core
(``tasks/core``). A step is a plain function of paths and params, testable without Prefect; ``flows/dag.py`` wires
them into the DAG."""
