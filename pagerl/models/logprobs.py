"""Per-token logprobs (and entropies) of a Hugging Face causal LM, without building its full logits.

Every loss of PageRL (SFT, policy, old policy, reference, KL) needs the
log-probability of given tokens, not the ``[batch, length, vocabulary]``
logits that ``model(...)`` returns. :class:`CausalLMLogprobs` wraps a causal
LM, runs only its backbone (``model.get_decoder()`` / ``model.model``, which
ends with the final norm) and hands the last hidden states and the LM-head
weight to :func:`pagerl_kernels.fused_linear_logprobs`, which holds at most
one tile of logits at a time (see ``kernels/``).

API
---
``CausalLMLogprobs(model, impl="auto", page_tokens=None)`` -- an ``nn.Module``;
``model`` is registered as its submodule ``.model``, so ``wrapper.parameters()``
are the model's parameters (hand the *wrapper* to ``deepspeed.initialize``).
``page_tokens`` (:class:`~pagerl.models.constrained_logprobs.PageTokens`) are
the index, EOS and padding ids the constrained mode needs; by default they are
read from a candidate-pointer policy's config, and a policy without the
pointer needs ``PageTokens.from_tokenizer(tokenizer)``.

``wrapper(input_ids, attention_mask=None, labels=None, temperature=1.0,
return_entropy=False, position_ids=None, prompt_end=None, constraint=None, top_p=1.0)``:

* ``input_ids``, ``attention_mask``, ``labels``: ``[B, L]``. ``labels`` uses
  the Hugging Face convention (``-100`` = not scored); ``None`` scores every
  attended token (``input_ids`` where ``attention_mask`` is 1).
* returns ``logprobs`` ``[B, L-1]`` float32 (float64 for a float64 model), or
  ``(logprobs, entropy)`` with ``return_entropy=True``. Column ``t`` is
  ``log p(labels[:, t+1] | tokens <= t)``: the label at position ``t+1`` scored
  from the hidden state at ``t``, exactly ``log_softmax(model(...).logits /
  temperature)[:, :-1].gather(-1, labels[:, 1:])``. Columns whose label is
  ``-100`` are 0 (logprob and entropy) and send no gradient. ``entropy[:, t]`` is
  the entropy of that whole next-token distribution.
* ``temperature`` divides the logits, as sampling does (trainer logprobs must
  use the rollout's sampling temperature to match it).
* ``position_ids`` is passed to the backbone. With left padding, pass
  ``attention_mask.cumsum(-1) - 1`` (clamped at 0) to reproduce what
  ``generate`` used.
* ``constraint`` (:class:`~pagerl.models.constrained_logprobs.ResponseConstraint`,
  ``N_b`` and ``K_b`` per row): score under the *constrained* distribution,
  the one rollout samples from with ``constrained=True`` (only unused index
  tokens of the row's candidates, then a forced EOS with logprob 0), instead
  of the full-vocabulary softmax. Logprobs and entropies are those of that
  masked, tempered distribution, computed from the (at most ``N_max + 2``) page-token
  logits only (:func:`~pagerl.models.constrained_logprobs.constrained_linear_logprobs`);
  the response starts at ``prompt_end`` (default: the first scored label), and
  a label the constraint forbids is a ValueError. Without it (the default)
  the full-vocabulary path below is unchanged, e.g. for SFT's plain NLL.

``wrapper.sequence_logprobs(...)`` -- same arguments, returns ``[B]``: the sum
over each row's scored tokens (:func:`sum_per_sequence`).

Models whose logits are not ``hidden @ W.T`` are handled or refused here:
logit scaling (``logit_scale``, ``logits_scaling``) is folded into the
temperature; final-logit soft-capping and an LM-head bias are refused with a
ValueError, since the fused kernels compute plain linear logits.

Policies with the candidate pointer (:mod:`pagerl.models.candidates`, marked
in their config) get the candidate echo on their inputs and the pointer term
on their index-token logits, in the kernel path through an exactly augmented
head. Their prompts must be known: ``prompt_end`` (``[B]``, the position of
each row's first response token) or, by default, the first scored label.
:func:`policy_logits` is the explicit reference of the same distribution (full
logits; for tests, generation and small vocabularies).

DeepSpeed ZeRO-3: the LM-head weight is partitioned and gathered only during
the forward of the module that owns it, and the wrapper never calls that
module. So when the weight is a ZeRO-3 parameter (it has ``ds_id``) the
wrapper registers it as an external parameter of itself
(``deepspeed.zero.register_external_parameter``): at construction if the model
was built under ``zero.Init``, otherwise in a forward pre-hook on the first
forward after ``deepspeed.initialize`` (the hook was registered before
DeepSpeed's own hooks, so it runs first and DeepSpeed then gathers the weight
for this forward and its backward). Tied input/output embeddings are one
Parameter: its gradient sums both uses, with or without ZeRO.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

from pagerl.models.candidates import CandidatePointer, prompt_end_from_labels
from pagerl.models.constrained_logprobs import PageTokens, ResponseConstraint, constrained_linear_logprobs
from pagerl_kernels import fused_linear_logprobs

IGNORE_INDEX = -100


def sum_per_sequence(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum ``values[B, L-1]`` (aligned with ``labels[:, 1:]``) over each row's scored tokens -> ``[B]``."""
    if values.dim() != 2 or labels.dim() != 2 or values.shape != (labels.shape[0], labels.shape[1] - 1):
        raise ValueError(
            f"sum_per_sequence: values must be [B, L-1] for labels [B, L], got {tuple(values.shape)} "
            f"and {tuple(labels.shape)}"
        )
    mask = labels[:, 1:] != IGNORE_INDEX
    return (values * mask.to(values.dtype)).sum(dim=1)


def backbone_of(model: nn.Module) -> nn.Module:
    """The model without its LM head (its forward returns the last, normed, hidden states)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None or decoder is model:
        decoder = getattr(model, "model", None)
    if not isinstance(decoder, nn.Module):
        raise ValueError(
            f"CausalLMLogprobs: cannot find the backbone of {type(model).__name__}: expected "
            "model.get_decoder() or model.model to return the decoder without the LM head"
        )
    return decoder


def _logit_multiplier(config: Any) -> float:
    """Factor the model applies to ``hidden @ W.T`` to get its logits (refusing what is not a factor)."""
    softcap = getattr(config, "final_logit_softcapping", None)
    if softcap is not None:
        raise ValueError(
            f"CausalLMLogprobs: {type(config).__name__}.final_logit_softcapping={softcap} is set; the fused "
            "kernels compute plain linear logits and cannot apply tanh soft-capping"
        )
    mult = 1.0
    scale = getattr(config, "logit_scale", None)  # e.g. Cohere: logits * logit_scale
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        mult *= float(scale)
    scaling = getattr(config, "logits_scaling", None)  # e.g. Granite: logits / logits_scaling
    if isinstance(scaling, (int, float)) and not isinstance(scaling, bool):
        mult /= float(scaling)
    if not mult > 0:
        raise ValueError(f"CausalLMLogprobs: the model's logit scaling gives a non-positive factor {mult}")
    return mult


def _register_head_pre_hook(module: "CausalLMLogprobs", args: Tuple[Any, ...]) -> None:
    module._register_head_if_partitioned()


class CausalLMLogprobs(nn.Module):
    """Per-token logprobs of a causal LM through the fused kernel (API in the module docstring)."""

    def __init__(self, model: nn.Module, *, impl: str = "auto", page_tokens: Optional[PageTokens] = None) -> None:
        super().__init__()
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
            raise ValueError(
                f"CausalLMLogprobs: {type(model).__name__}.get_output_embeddings() must return the LM head "
                "(a module with a [V, H] weight)"
            )
        if getattr(head, "bias", None) is not None:
            raise ValueError("CausalLMLogprobs: an LM head with a bias is not supported by the fused kernels")
        backbone_of(model)  # fail now, not at the first forward
        self.model = model
        self.pointer = CandidatePointer.of(model)
        self.impl = impl
        self.page_tokens = page_tokens if page_tokens is not None else PageTokens.from_config(model.config)
        if self.pointer is not None and self.page_tokens is not None and (
            self.page_tokens.candidate_ids != tuple(int(t) for t in self.pointer.index_ids.tolist())
        ):
            raise ValueError(
                "CausalLMLogprobs: page_tokens.candidate_ids must be the pointer's index token ids "
                "(config.pagerl_index_token_ids) in the same order: the pointer adds score j to <cj>'s logit"
            )
        self._logit_multiplier = _logit_multiplier(getattr(model, "config", None))
        self._head_registered = False
        self._register_head_if_partitioned()
        self.register_forward_pre_hook(_register_head_pre_hook)

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.model.get_output_embeddings().weight

    def _register_head_if_partitioned(self) -> None:
        """Make ZeRO-3 gather the LM-head weight for this module's forward and backward (once)."""
        if self._head_registered:
            return
        weight = self.lm_head_weight
        if hasattr(weight, "ds_id"):
            import deepspeed  # only ZeRO-3 parameters carry ds_id, so deepspeed is installed

            deepspeed.zero.register_external_parameter(self, weight)
            self._head_registered = True

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        prompt_end: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(hidden [B, L, H], contents)``: last hidden states of the backbone (after its final
        norm) and, for a pointer policy, the candidate contents ``[B, M, H]`` (else None)."""
        return backbone_forward(self.model, self.pointer, input_ids, attention_mask, position_ids, prompt_end)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        temperature: float = 1.0,
        return_entropy: bool = False,
        position_ids: Optional[torch.Tensor] = None,
        prompt_end: Optional[torch.Tensor] = None,
        constraint: Optional[ResponseConstraint] = None,
        top_p: float = 1.0,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        if input_ids.dim() != 2:
            raise ValueError(f"CausalLMLogprobs: input_ids must be [B, L], got {tuple(input_ids.shape)}")
        if input_ids.shape[1] < 2:
            raise ValueError("CausalLMLogprobs: sequences need at least 2 tokens (one to condition on, one to score)")
        if top_p < 1.0 and constraint is None:
            raise ValueError("CausalLMLogprobs: top_p < 1 is scored under the constraint only (constraint=...); the "
                             "full-vocabulary fused path has no nucleus")
        if constraint is not None:
            if not isinstance(constraint, ResponseConstraint):
                raise ValueError(f"CausalLMLogprobs: constraint must be a ResponseConstraint, got {type(constraint).__name__}")
            if self.page_tokens is None:
                raise ValueError(
                    "CausalLMLogprobs: constraint= needs the page tokens (index ids, EOS, pad), which this policy's "
                    "config does not store: construct it with page_tokens=PageTokens.from_tokenizer(tokenizer)"
                )
        if prompt_end is None and (self.pointer is not None or constraint is not None):
            if labels is None:  # every token scored: nothing says where the prompt (candidate list) ends
                who = "a candidate-pointer policy" if self.pointer is not None else "constraint="
                raise ValueError(f"CausalLMLogprobs: {who} needs labels marking the response (-100 on the "
                                 "prompt) or prompt_end")
            prompt_end = prompt_end_from_labels(labels)
        if prompt_end is not None:
            prompt_end = torch.as_tensor(prompt_end, dtype=torch.long, device=input_ids.device)
        if labels is None:
            labels = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
            if constraint is not None:  # only the response is scored under the constraint
                positions = torch.arange(input_ids.shape[1], device=input_ids.device)
                labels = labels.masked_fill(positions[None, :] < prompt_end[:, None], IGNORE_INDEX)
        elif labels.shape != input_ids.shape:
            raise ValueError(
                f"CausalLMLogprobs: labels {tuple(labels.shape)} must have input_ids' shape {tuple(input_ids.shape)}"
            )
        hidden, contents = self.hidden_states(input_ids, attention_mask, position_ids, prompt_end)
        hidden, weight = hidden[:, :-1], self.lm_head_weight
        if constraint is not None:
            # Column t predicts the token at position t + 1, which is a response step from prompt_end on.
            steps = torch.arange(1, input_ids.shape[1], device=input_ids.device)
            in_response = steps[None, :] >= prompt_end[:, None]
            return constrained_linear_logprobs(
                hidden,
                weight,
                labels[:, 1:],
                input_ids[:, 1:],
                in_response,
                self.page_tokens,
                constraint,
                pointer_scores=None if self.pointer is None else self.pointer.scores(hidden, contents),
                logit_multiplier=self._logit_multiplier,
                temperature=temperature,
                top_p=top_p,
                return_entropy=return_entropy,
            )
        if self.pointer is not None:
            hidden, weight = self.pointer.augment(hidden, weight, self.pointer.scores(hidden, contents))
        return fused_linear_logprobs(
            hidden,
            weight,
            labels[:, 1:],
            temperature=float(temperature) / self._logit_multiplier,
            ignore_index=IGNORE_INDEX,
            return_entropy=return_entropy,
            impl=self.impl,
        )

    def sequence_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        temperature: float = 1.0,
        position_ids: Optional[torch.Tensor] = None,
        prompt_end: Optional[torch.Tensor] = None,
        constraint: Optional[ResponseConstraint] = None,
    ) -> torch.Tensor:
        """``[B]`` log-probability of each row's scored tokens (sum over them); with ``constraint``,
        of the whole response under the constrained policy (what rollout's ``GeneratedPage.logprob`` is)."""
        logp = self.forward(input_ids, attention_mask, labels, temperature=temperature, position_ids=position_ids,
                            prompt_end=prompt_end, constraint=constraint)
        # Unscored columns are exactly 0 (ignored labels, or the prompt under a constraint), so the row sum
        # is the sum over the scored tokens whichever default the forward chose.
        return logp.sum(dim=1)


def backbone_inputs(
    model: nn.Module, pointer: Optional[CandidatePointer], input_ids: torch.Tensor,
    prompt_end: Optional[torch.Tensor],
) -> Tuple[Dict[str, torch.Tensor], Optional[torch.Tensor]]:
    """``(backbone input kwargs, candidate contents or None)`` of full sequences.

    A plain causal LM takes ``input_ids``; a candidate-pointer policy takes its
    echoed ``inputs_embeds`` and needs ``prompt_end`` to find the candidates.
    """
    if pointer is None:
        return {"input_ids": input_ids}, None
    if prompt_end is None:
        raise ValueError("a candidate-pointer policy needs prompt_end (or labels marking the response)")
    embeds, contents = pointer.prompt_inputs(model, input_ids, prompt_end)
    return {"inputs_embeds": embeds}, contents


def backbone_forward(
    model: nn.Module,
    pointer: Optional[CandidatePointer],
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    position_ids: Optional[torch.Tensor] = None,
    prompt_end: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(last hidden states, candidate contents or None)`` of a full-sequence forward."""
    inputs, contents = backbone_inputs(model, pointer, input_ids, prompt_end)
    out = backbone_of(model)(**inputs, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    return (out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]), contents


def head_logits(model: nn.Module, pointer: Optional[CandidatePointer], hidden: torch.Tensor,
                contents: Optional[torch.Tensor]) -> torch.Tensor:
    """Explicit float32 logits of hidden states ``[B, T, H]``: LM head, logit scaling, pointer."""
    logits = model.get_output_embeddings()(hidden)
    if pointer is not None:
        logits = pointer.add_to_logits(logits, pointer.scores(hidden, contents))
    return logits.float() * _logit_multiplier(getattr(model, "config", None))


def policy_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    prompt_end: Optional[torch.Tensor] = None,
    position_ids: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Full float32 logits ``[B, L, V]`` of a policy, candidate pointer included when its config has it.

    The explicit reference of what :class:`CausalLMLogprobs` computes through
    the fused kernel (for a plain causal LM it equals ``model(...).logits``).
    """
    pointer = CandidatePointer.of(model)
    hidden, contents = backbone_forward(model, pointer, input_ids, attention_mask, position_ids, prompt_end)
    return head_logits(model, pointer, hidden, contents)
