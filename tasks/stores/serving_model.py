"""The MLflow pyfunc face of a registered version: base generator + adapter stack + sampling settings.

Logged as models-from-code: this file travels inside the model, with a copy of `lethe.models` as its only
code path, so loading or serving a version needs torch, diffusers, torchdiffeq and safetensors (pinned), not
Lethe's pipeline and not any package resolved by name from a public index.

`mlflow.pyfunc.load_model("models:/lethe-generator@production").predict(pd.DataFrame({"concept": [...]}))`
returns the images (N x C x H x W float32 in [-1, 1]); optional integer columns `n` and `seed` per row.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, Schema, TensorSpec

SIGNATURE = ModelSignature(
    inputs=Schema(
        [ColSpec("string", "concept"), ColSpec("long", "n", required=False), ColSpec("long", "seed", required=False)]
    ),
    outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1, -1))]),
)


def input_example(concept: str) -> pd.DataFrame:
    """One request row, logged with the model (MLflow checks that the logged model answers it)."""
    return pd.DataFrame({"concept": [concept], "n": [1], "seed": [0]})


class LetheModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from lethe.models.adapter_stack import AdapterStack
        from lethe.models.generator import Generator

        self.generator = Generator.from_folder(context.artifacts["generator"])
        self.adapters = AdapterStack.load(context.artifacts["adapters"])
        with open(context.artifacts["sampling"]) as f:
            self.sampling = json.load(f)

    def predict(self, context, model_input: pd.DataFrame, params=None):  # DataFrame: validated by SIGNATURE
        from lethe.models.sampler import sample

        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        out = []
        for row in rows:
            n = row.get("n")
            seed = row.get("seed")
            images, _ = sample(
                self.generator,
                [row["concept"]],
                1 if n is None or n != n else int(n),
                0 if seed is None or seed != seed else int(seed),
                self.sampling["steps"],
                self.adapters,
                self.sampling["guidance"],
                self.sampling["batch_size"],
            )
            out.append(images.numpy())
        return np.concatenate(out)


# MLflow's loader executes this file under a fresh module name; a plain import as lethe.tasks.stores.serving_model
# (to read SIGNATURE, say) registers nothing.
if not __name__.startswith("lethe."):
    mlflow.models.set_model(LetheModel())
