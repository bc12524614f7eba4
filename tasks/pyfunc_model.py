"""The MLflow pyfunc face of a registered version: base generator + adapter stack + sampling settings.

`mlflow.pyfunc.load_model("models:/lethe-generator@production").predict(pd.DataFrame({"concept": [...]}))`
returns the images (N x C x H x W float32 in [-1, 1]); optional columns `n` and `seed` per row.
"""
from __future__ import annotations

import json

import mlflow.pyfunc
import numpy as np

PIP_REQUIREMENTS = ["torch==2.13.0", "diffusers==0.42.1", "torchdiffeq==0.2.5", "safetensors==0.8.0", "lethe"]


class LetheModel(mlflow.pyfunc.PythonModel):
    _skip_type_hint_validation = True  # input is a table of requests, not a typed schema

    def load_context(self, context):
        from models.adapter_stack import AdapterStack
        from models.generator import Generator

        self.generator = Generator.from_folder(context.artifacts["generator"])
        self.adapters = AdapterStack.load(context.artifacts["adapters"])
        with open(context.artifacts["sampling"]) as f:
            self.sampling = json.load(f)

    def predict(self, context, model_input, params=None):
        from models.sampler import sample

        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        out = []
        for row in rows:
            images, _ = sample(self.generator, [row["concept"]], int(row.get("n", 1)), int(row.get("seed", 0)),
                               self.sampling["steps"], self.adapters, self.sampling["guidance"])
            out.append(images.numpy())
        return np.concatenate(out)
