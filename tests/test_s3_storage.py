"""Replay sets on an S3 DVC remote (moto's server over HTTP on loopback): pushed into the bucket, then
restored byte for byte into an empty workspace that has only the remote, as a second machine would."""

from __future__ import annotations

import torch

from lethe.tasks.stores.replay_sets import DatasetStore
from tests.conftest import S3_BUCKET


def test_replay_sets_go_to_an_s3_remote_and_come_back_bit_exact(s3_bucket, s3_endpoint, tmp_path):
    remote = f"s3://{S3_BUCKET}/dvc"
    store = DatasetStore(tmp_path / "machine-a", remote, s3_endpoint)
    tensors = {"images": torch.randn(6, 1, 16, 16), "labels": torch.arange(6)}
    ref = store.save(7, 1, "forget", tensors)
    stored = [item["Key"] for item in s3_bucket.list_objects_v2(Bucket=S3_BUCKET).get("Contents", [])]
    assert stored and all(key.startswith("dvc/files/md5/") for key in stored)  # content-addressed, in the bucket
    config = (tmp_path / "machine-a" / ".dvc" / "config").read_text()
    assert s3_endpoint in config and "test" not in config.replace(S3_BUCKET, "")  # no credentials written
    # machine B: a new workspace with the .dvc file (as MLflow records it) and nothing else
    other = DatasetStore(tmp_path / "machine-b", remote, s3_endpoint)
    target = other.folder(7, 1) / ref.path.name
    target.parent.mkdir(parents=True)
    (target.parent / ref.dvc_file.name).write_text(ref.dvc_file.read_text())
    other._repo().close()  # an empty DVC repository pointed at the remote
    other.restore(target)
    assert target.read_bytes() == ref.path.read_bytes()
    assert other.ref(target).md5 == ref.md5
