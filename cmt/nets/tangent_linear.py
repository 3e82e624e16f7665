"""A linear layer whose forward-mode derivative treats its weight and bias as constants (latent.md 1.4).

PyTorch's forward-AD rule for ``addmm`` multiplies by the weight's tangent even when the weight is no JVP input: it
materialises a zero tangent and runs a second full matrix product, so a JVP through a transformer costs two extra
forward passes instead of one. Every JVP in this package is taken over (z, t) with the parameters fixed (MeanFlow's
and CMT-MF's du/dt), so the tangent of y = x·Wᵀ + b is ẏ = ẋ·Wᵀ. Values, gradients and gradients through the
tangent are those of ``nn.Linear`` (``tests/test_tangent_linear.py``); a JVP *over the parameters* is not supported.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _ConstantWeightLinear(torch.autograd.Function):
    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor, Tensor | None], output: Tensor) -> None:
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        flat = grad.reshape(-1, grad.shape[-1])
        grad_x = grad @ weight.to(grad.dtype) if ctx.needs_input_grad[0] else None
        grad_w = (
            (flat.t() @ x.reshape(-1, x.shape[-1]).to(grad.dtype)).to(weight.dtype) if ctx.needs_input_grad[1] else None
        )
        grad_b = flat.sum(0).to(weight.dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b

    @staticmethod
    def jvp(ctx: Any, x_tangent: Tensor, weight_tangent: Tensor, bias_tangent: Tensor | None) -> Tensor:
        (weight,) = ctx.saved_tensors
        return F.linear(x_tangent, weight)  # d(x·Wᵀ + b) with W, b constant (module docstring)


class TangentLinear(nn.Linear):
    """``nn.Linear`` with the same parameters and state-dict names, whose JVP skips the weights' zero tangent."""

    def forward(self, x: Tensor) -> Tensor:
        return _ConstantWeightLinear.apply(x, self.weight, self.bias)
