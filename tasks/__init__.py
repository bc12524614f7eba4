"""Units of work of the Lethe pipeline, each runnable on its own (Prefect tasks where they are steps)."""
