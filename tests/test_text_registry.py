"""A text-to-image version through the real MLflow registry: registered, loaded back with its named
adapters, and answering prompts through its pyfunc exactly as the generator does."""

import pandas as pd
import pytest
import torch

from lethe.models.adapter_stack import AdapterStack
from lethe.models.ode_adapter import ODEAdapter
from lethe.tasks.stores.registry import Registry
from lethe.tasks.workspace import Workspace
from tests.conftest import ode_config, small_settings
from tests.sd_folder import tiny_text_to_image

pytestmark = pytest.mark.slow


def test_a_text_to_image_version_registers_loads_and_serves_prompts(tmp_path):
    settings = small_settings(paths__workspace=str(tmp_path / "ws"), sampling__steps=3, sampling__guidance=2.0)
    generator = tiny_text_to_image(tmp_path)
    stack = AdapterStack()
    field = ODEAdapter(generator.feature_channels("up_blocks.1"), ode_config())
    torch.nn.init.normal_(field.field.outer.weight, std=0.3)
    stack.add("request-1", {"up_blocks.1": field}, intensity=1.5)
    registry = Registry(Workspace.open(settings), settings.registry)
    version = registry.register(
        key="request-1-attempt-1",
        generator=generator,
        adapters=stack,
        sampling=settings.sampling.model_dump(),
        run_name="t2i",
        settings={"a": 1},
        metrics={},
        tags={"kind": "unlearning-step"},
        description="text",
        files={},
    )
    loaded, adapters = registry.load(version)
    assert loaded.kind == "text-to-image" and adapters.names == ["request-1"]
    assert adapters.sha256() == stack.sha256()
    expected = generator.sample(["a pair of pants"], 2, 4, 3, 2.0, stack)
    assert torch.equal(loaded.sample(["a pair of pants"], 2, 4, 3, 2.0, adapters), expected)
    model = registry.pyfunc(version)
    images = model.predict(pd.DataFrame({"prompt": ["a pair of pants"], "n": [2], "seed": [4]}))
    assert torch.equal(torch.from_numpy(images), expected)
    with pytest.raises(Exception, match="prompt"):  # a text model is asked by prompt, not by concept
        model.predict(pd.DataFrame({"concept": ["trouser"]}))
