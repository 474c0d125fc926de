"""Response shaping: a task's logits -> the API's predictions (labels, probabilities, values)."""
from __future__ import annotations

import torch

from adamix import TaskSpec


def predictions(task: TaskSpec, logits: list[torch.Tensor]) -> list[dict]:
    """One prediction dict per output row: softmax over the task's own labels, the regression value, or the
    embedding (already unit length)."""
    if task.type == "embedding":
        return [{"embedding": row.tolist()} for row in logits]
    if task.regression:
        return [{"value": float(row[0])} for row in logits]
    probs = torch.softmax(torch.stack(logits), dim=-1).tolist()  # (n, C)
    out = []
    for p in probs:
        best = max(range(len(p)), key=p.__getitem__)
        out.append({"label": task.labels[best], "score": p[best], "scores": dict(zip(task.labels, p))})
    return out
