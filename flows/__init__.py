"""The composition root: the params, the DAG declared once, the Prefect flows (augment, anonymize, compare, tune),
schedules and the command line."""
