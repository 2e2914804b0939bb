"""The PPO critic: a value of the state *before* each response token.

A value must estimate what is still to come when an action is chosen, so it
may only see what the policy saw when it chose it. The value of response
token t (slot t, or EOS) is read from the hidden state that *predicts* that
token, at sequence position ``prompt_end - 1 + t``: the prompt and the items
already placed, not the item being placed. (The reward model's item head
reads each slot's index token, the state *after* the placement, which is
right for a reward of that placement and wrong for a value.)

The critic starts as a copy of the SFT policy (same backbone, candidate echo
included) with a scalar head initialised to zero, so its first values are 0
and its first advantages are the rewards themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch
from safetensors.torch import save_file
from torch import nn

from pagerl.models.candidates import CandidatePointer
from pagerl.models.logprobs import backbone_forward
from pagerl.rl.frames import to_response_frame


class ValueModel(nn.Module):
    """``V[b, t]`` in the response frame from a causal LM's backbone (module docstring)."""

    def __init__(self, policy: Any) -> None:
        super().__init__()
        self.model = policy
        self.pointer = CandidatePointer.of(policy)
        hidden = int(policy.config.hidden_size)
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        head = policy.get_output_embeddings()
        if head is not None and head.weight is not policy.get_input_embeddings().weight:
            # The LM head plays no part in a value; frozen, it gets no optimizer state.
            head.weight.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_end: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        hidden, _ = backbone_forward(self.model, self.pointer, input_ids, attention_mask, None, prompt_end)
        values = self.value_head(hidden).squeeze(-1).float()  # [B, L]: value of the state at each position
        return to_response_frame(values, prompt_end, mask)

    def save_pretrained(self, directory: str | Path, state_dict: Optional[Dict[str, torch.Tensor]] = None,
                        safe_serialization: bool = True) -> None:
        """The weights (named as in ``named_parameters``) and the backbone's config: what
        :meth:`pagerl.train.engine.ZeroPolicy.save` writes into an RL checkpoint, and loads back."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = state_dict if state_dict is not None else dict(self.named_parameters())
        save_file({n: t.detach().cpu().contiguous() for n, t in tensors.items()}, str(directory / "model.safetensors"),
                  metadata={"format": "pt"})
        self.model.config.save_pretrained(directory)
