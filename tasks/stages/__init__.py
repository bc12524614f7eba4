"""DVC stages (`dvc.yaml`): ingest the packaged data, prepare tensors, train the base generator and the judge."""
