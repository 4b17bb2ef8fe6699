"""Value (critic) models for PPO.

``ValueModel`` is a causal-LM backbone (``AutoModel``) with a scalar head, V_t read at every
position. It is either a separate model initialised from a checkpoint (the policy's, by default),
or a head on the policy's own backbone (``SharedValueHead``: one forward pass gives logits and
values). Both save in Hugging Face format plus ``value_head.safetensors``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rewardlab.models.batching import position_ids_from_mask
from rewardlab.models.fast import response_states
from rewardlab.models.loading import full_precision


HEAD_FILE = "value_head.safetensors"


def _float32_head(head: nn.Linear, h: torch.Tensor) -> torch.Tensor:
    """head(h) (B, L, hidden) → (B, L) in float32, also under bfloat16 autocast (GAE takes
    differences of neighbouring values)."""
    with full_precision(h):
        return head(h.float()).squeeze(-1)


class ValueModel(nn.Module):
    """V(x, y_<=t) for every position t: backbone hidden state → Linear(h, 1)."""

    def __init__(self, backbone, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype=torch.float32, trust_remote_code: bool = False):
        from safetensors.torch import load_file
        from transformers import AutoModel

        backbone = AutoModel.from_pretrained(str(path), dtype=dtype, trust_remote_code=trust_remote_code)
        model = cls(backbone, backbone.config.hidden_size)
        head = Path(path) / HEAD_FILE
        if head.exists():
            model.head.load_state_dict(load_file(str(head)))
        return model

    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        Path(path).mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(str(path))
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(Path(path) / HEAD_FILE))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) → values (B, L)."""
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids_from_mask(attention_mask)).last_hidden_state
        return _float32_head(self.head, h)

    def response_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_response: int,
                        fast: bool = False) -> torch.Tensor:
        """V_t (B, T) for each of the last T = ``n_response`` tokens, read at the position that
        predicts it (rows: left-padded prompt | right-padded response, as in a rollout batch).
        ``fast``: through :func:`rewardlab.models.fast.response_states` (each distinct prompt
        once, responses in length buckets), else ``forward``; values at padding positions are
        meaningless (callers mask them)."""
        if fast:
            return response_states(self.backbone, lambda h: _float32_head(self.head, h).unsqueeze(-1),
                                   input_ids, attention_mask, n_response).squeeze(-1)
        return self(input_ids, attention_mask)[:, -n_response - 1:-1]


class SharedValueHead(nn.Module):
    """A value head on the policy's backbone: reads the policy's last hidden state."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return _float32_head(self.head, hidden)

    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        Path(path).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(Path(path) / HEAD_FILE))

    def load(self, path: str | Path) -> None:
        from safetensors.torch import load_file
        self.head.load_state_dict(load_file(str(Path(path) / HEAD_FILE)))
