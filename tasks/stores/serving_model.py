"""The MLflow pyfunc face of a registered version: base generator + adapter stack + sampling settings.

Logged as models-from-code: this file travels inside the model, with a copy of `lethe.models` as its only
code path, so loading or serving a version needs torch, diffusers, torchdiffeq and safetensors (pinned), not
Lethe's pipeline and not any package resolved by name from a public index.

`mlflow.pyfunc.load_model("models:/lethe-generator@production").predict(pd.DataFrame({"concept": [...]}))`
(a `prompt` column for a text-to-image version) returns the images (N x C x H x W float32 in [-1, 1]);
optional integer columns `n` and `seed` per row.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, Schema, TensorSpec

OUTPUT = Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1, -1))])
OPTIONAL = [ColSpec("long", "n", required=False), ColSpec("long", "seed", required=False)]
# One request column per generator kind: a concept name, or a prompt for a text-to-image generator.
SIGNATURES = {
    "class-conditional": ModelSignature(inputs=Schema([ColSpec("string", "concept"), *OPTIONAL]), outputs=OUTPUT),
    "text-to-image": ModelSignature(inputs=Schema([ColSpec("string", "prompt"), *OPTIONAL]), outputs=OUTPUT),
}
SIGNATURE = SIGNATURES["class-conditional"]


def input_example(kind: str, request: str) -> pd.DataFrame:
    """One request row, logged with the model (MLflow checks that the logged model answers it)."""
    column = "prompt" if kind == "text-to-image" else "concept"
    return pd.DataFrame({column: [request], "n": [1], "seed": [0]})


def _count(value, default: int) -> int:
    return default if value is None or value != value else int(value)  # a missing optional column is NaN


class LetheModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from lethe.models.adapter_stack import AdapterStack
        from lethe.models.generator_kinds import load_generator

        self.generator = load_generator(context.artifacts["generator"])
        self.adapters = AdapterStack.load(context.artifacts["adapters"])
        with open(context.artifacts["sampling"]) as f:
            self.sampling = json.load(f)

    def predict(self, context, model_input: pd.DataFrame, params=None):  # DataFrame: validated by SIGNATURES
        s, out, column = self.sampling, [], self.generator.request_column
        for row in model_input.to_dict("records"):
            n, seed = _count(row.get("n"), 1), _count(row.get("seed"), 0)
            images = self.generator.sample_requests(
                [row[column]], n, seed, s["steps"], self.adapters, s["guidance"], s["batch_size"]
            )
            out.append(images.numpy())
        return np.concatenate(out)


# MLflow's loader executes this file under a fresh module name; a plain import as lethe.tasks.stores.serving_model
# (to read SIGNATURE, say) registers nothing.
if not __name__.startswith("lethe."):
    mlflow.models.set_model(LetheModel())
