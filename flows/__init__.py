"""Composition of the pipeline: Prefect flows, schedules, deployments and the `lethe` CLI."""
