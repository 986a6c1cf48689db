"""Automatic mixed precision: bf16 on GPUs that support it, fp16 with loss scaling otherwise, fp32 on CPU."""

from __future__ import annotations

import contextlib

import torch

from pipeline.config.schema import AmpMode


class Precision:
    """Autocast context and gradient scaler for one training run."""

    def __init__(self, mode: AmpMode, device: torch.device):
        if device.type != "cuda" or mode == "off":
            self.dtype = None
        elif mode == "auto":
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            self.dtype = torch.bfloat16 if mode == "bf16" else torch.float16
        self.device = device
        # fp16 needs loss scaling to keep small gradients representable; bf16 has fp32's range.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)

    @property
    def name(self) -> str:
        return "fp32" if self.dtype is None else str(self.dtype).removeprefix("torch.")

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)
