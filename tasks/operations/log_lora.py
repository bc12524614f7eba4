"""`lethe export --format lora --log-mlflow`: the LoRA just written, logged with MLflow's own diffusers flavour.

MLflow's flavour keeps the LoRA's weights and the base's location; its pyfunc loads the base with diffusers and
the LoRA onto it (`load_lora_weights`), so `mlflow models serve` answers prompts with no code of Lethe's. The
export is checked first as `verify-export` checks it (every file's hash, and the base's UNet tensors against the
hash the LoRA was fitted to), so what is logged is what was gated.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import UNet2DConditionModel

from lethe.tasks.operations.verify_export import check_base, check_files
from lethe.tasks.stores.integrity import file_sha256
from lethe.tasks.stores.registry import Registry


def log_lora(registry: Registry, folder: str | Path, base: str | Path) -> str:
    """Log the LoRA export in `folder`, fitted to the Stable-Diffusion folder `base`; returns its model URI."""
    folder, base = Path(folder).resolve(), Path(base).resolve()
    manifest = check_files(folder)
    if manifest.get("export_format") != "lora":
        raise ValueError(f"{folder} is a {manifest.get('export_format')} export: MLflow's diffusers flavour logs LoRAs")
    check_base(UNet2DConditionModel.from_pretrained(str(base / "unet")), base, manifest)
    tags = {
        "source_version": manifest["version"],
        "forgotten": ",".join(manifest["forgotten"]),
        "requests": ",".join(str(r) for r in manifest["requests"]),
        "lethe_export_sha256": file_sha256(folder / manifest["weight_name"]),
        "base_unet_state_sha256": manifest["base"]["unet_state_sha256"],
    }
    return registry.register_lora(folder / manifest["weight_name"], base, folder, tags)
