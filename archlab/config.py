"""The `model:` section of a spec: what every block needs to know about the model."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}


class ModelConfig(BaseModel):
    """Model-wide settings (`model:` in a spec)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    d_model: int = Field(ge=1, le=1 << 20)
    vocab_size: int = Field(ge=1, le=1 << 24)
    max_seq_len: int = Field(default=4096, ge=1, le=1 << 30)
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    norm_eps: float = Field(default=1e-6, gt=0, lt=1)
    tie_embeddings: bool = False
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def dtype_bytes(self) -> int:
        return DTYPES[self.dtype].itemsize
