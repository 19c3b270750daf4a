"""Network slimming's training hook: an L1 penalty on BatchNorm γ (Liu et al. 2017).

    loss = criterion(model(x), y) + slimc.prune.slim_regularizer(model, 1e-4)

drives the γ of unneeded channels toward zero; ``slimc prune --criterion slim`` (global
ranking, as the paper does) then removes the channels with the smallest |γ|.
"""
from __future__ import annotations

import torch
from torch import nn


def slim_regularizer(model: nn.Module, lam: float = 1e-4) -> torch.Tensor:
    """``lam · Σ |γ|`` over every BatchNorm (and SyncBatchNorm) with an affine weight."""
    terms = [m.weight.abs().sum() for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    if not terms:
        return torch.zeros(())
    return lam * torch.stack(terms).sum()
