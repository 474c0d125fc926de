"""AdaMix: mixture-of-adaptations for parameter-efficient tuning, as a library (no web code).

Train a mixture (stochastic routing + consistency), merge it by weight averaging, and ship the merged
adapter as one validated `.safetensors` file.
"""
from adamix.adapter_file import (
    AdapterFile,
    AdapterFileError,
    BackboneMismatchError,
    read_adapter_bytes,
    read_adapter_file,
    write_adapter_file,
)
from adamix.convert import adapter_from_model, task_model_from_adapter
from adamix.backbone import BackboneInfo, backbone_fingerprint, backbone_info, default_backbone_path, load_backbone
from adamix.config import AdaMixConfig
from adamix.layers import Router
from adamix.losses import consistency_loss, embedding_consistency_loss, regression_consistency_loss
from adamix.model import add_adamix, adapter_parameters, count_adapter_parameters, merge_adamix
from adamix.peft_export import export_peft_lora
from adamix.task import AdaMixTaskModel, TaskSpec

__all__ = [
    "AdaMixConfig", "AdaMixTaskModel", "AdapterFile", "AdapterFileError", "BackboneInfo", "BackboneMismatchError",
    "Router", "TaskSpec", "adapter_from_model", "adapter_parameters", "add_adamix", "backbone_fingerprint",
    "backbone_info", "consistency_loss", "count_adapter_parameters", "default_backbone_path",
    "embedding_consistency_loss", "export_peft_lora",
    "load_backbone", "merge_adamix", "read_adapter_bytes", "read_adapter_file", "regression_consistency_loss",
    "task_model_from_adapter", "write_adapter_file",
]
