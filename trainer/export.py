"""Where a trained adapter goes: the merged file, a server's registry, a running server, and its curves."""
from __future__ import annotations

import warnings
from pathlib import Path

from adamix import AdaMixTaskModel, AdapterFile, BackboneInfo, adapter_from_model, merge_adamix


class ExportError(RuntimeError):
    """The adapter was trained but could not be published or uploaded."""


def merged_adapter(model: AdaMixTaskModel, info: BackboneInfo, provenance: dict) -> AdapterFile:
    """Merge the mixture in place (uniform weight averaging) and extract the served adapter."""
    merge_adamix(model)
    return adapter_from_model(model, info, model.task, provenance)


def publish(registry_dir: Path, info: BackboneInfo, task_name: str, data: bytes) -> dict:
    """Publish into a server's registry directory through the shared registry layer (`adamix.registry`)."""
    from adamix.manifest import RegistryError
    from adamix.registry import AdapterRegistry

    try:
        return AdapterRegistry(Path(registry_dir), info).publish(task_name, data).model_dump(mode="json")
    except RegistryError as exc:
        raise ExportError(f"--registry {registry_dir}: publishing task {task_name!r} failed: {exc}") from None


def push(url: str, api_key: str | None, task_name: str, data: bytes, timeout: float = 60.0) -> dict:
    """Upload to a running server (`PUT {url}/v1/adapters/{task}`) with the adapter API's one client."""
    from adamix.client import AdapterClient, ClientError

    if not api_key:
        raise ValueError("--push needs --api-key (an admin key of the server)")
    try:
        return AdapterClient(url, api_key, timeout).upload(task_name, data)
    except ClientError as exc:
        raise ExportError(f"--push: {exc}") from None


def plot_curves(history: list[dict], metric: str, path: Path) -> bool:
    """PNG of train loss and dev metric against steps; skipped with a warning when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: skipping the learning-curve plot "
                      "(pip install 'adamix-serve[plot]')", RuntimeWarning, stacklevel=2)
        return False
    steps = [r["step"] for r in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(steps, [r["train_loss"] for r in history], marker="o", label="train")
    ax_loss.plot(steps, [r["dev_loss"] for r in history], marker="o", label="dev")
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_loss.legend()
    ax_metric.plot(steps, [r[f"dev_{metric}"] for r in history], marker="o", color="tab:green")
    ax_metric.set(xlabel="step", ylabel=metric, title=f"dev {metric}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
