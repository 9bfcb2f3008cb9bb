"""Temperature scaling (Guo et al., ICML 2017): one scalar T fitted on held-out logits so that softmax(z / T)
minimises their NLL. Dividing every logit by the same T > 0 keeps each prediction, so top-1 never changes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0  # a separable validation set would drive T to 0 without a bound


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, *, max_iter: int = 100) -> float:
    """The T in [0.01, 100] that minimises the NLL of `logits / T`; 1.0 for an empty set.

    The NLL is convex in 1/T, so L-BFGS on log(1/T) from T = 1 finds the one minimum; float64 keeps the
    result the same however the logits were chunked.
    """
    if labels.numel() == 0:
        return 1.0
    logits, labels = logits.detach().double(), labels.long()  # (N, C), (N,)
    log_inverse = torch.zeros((), dtype=torch.float64, requires_grad=True)  # log(1 / T)
    optimizer = torch.optim.LBFGS([log_inverse], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits * log_inverse.clamp(-4.7, 4.7).exp(), labels)  # e^±4.7 ≈ 100, the bounds
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(torch.exp(-log_inverse.detach()))
    return min(max(temperature, MIN_TEMPERATURE), MAX_TEMPERATURE)
