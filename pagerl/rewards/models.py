"""The page-level and item-level reward models: one backbone, two scalar heads.

A page is scored from its serialization as a policy response, the prompt
(:func:`pagerl.tokenization.encode_prompt`) followed by the page's K index
tokens and EOS, run through a transformer backbone of the policy's family:

- the **page reward** is one scalar per page: ``page_head`` of the mean of the
  hidden states at EOS (which sees the whole request and page) and at the K
  slot index tokens (``rm.page_pooling: mean``, the default: each item's state
  feeds the page score directly), or of the EOS state alone (``eos``);
- the **item reward** of slot k is ``item_head(h[index token of slot k])``:
  under the backbone's causal attention it sees the request and the items in
  slots 0..k only, so a slot's score depends on the items above it, not
  below (what a user reading top-down has seen when they reach it).

**Candidate echo** (``rm.candidate_echo``, on by default; our addition): the
input embedding of each response index token ``<cj>`` gets the mean input
embedding of candidate j's words in the prompt added to it, so the slot token
knows which item it stands for from layer 0. Measured on quickstart data with
a fresh tiny backbone: without it, 300-400 steps learned nothing (held-out
pair accuracy 0.47-0.50, Spearman ~0); with it, the same budget reaches 0.65
and 0.35 -- the pointer lookup ``<cj>`` -> "the words after ``<cj>`` in the
prompt" is hard to discover from noisy pairwise labels alone (an SFT-trained
backbone has partly learned it already, and the echo does it no harm).

Our design choice (the paper gives none): the two models share one backbone
and differ in their heads, trained jointly on the same pairs with the sum of
their Bradley-Terry losses (:mod:`pagerl.rewards.rm_loop`). One forward pass
then serves both rewards, which halves the cost of training and of scoring
every rollout; the heads stay separate, so RL can weigh page and item rewards
independently (page-only and item-only runs set one weight to zero).

Checkpoint format (a directory, written by :meth:`RewardModel.save_pretrained`):

- ``config.json`` + ``model.safetensors``: Hugging Face-loadable. The backbone's
  weights sit under the prefix ``model.`` (as in a ``*ForCausalLM``), so
  ``AutoModel.from_pretrained(dir)`` loads the backbone as it is (the head
  weights ``page_head.*`` / ``item_head.*`` are reported as unused);
- ``reward_model.json``: what the heads are and where they read;
- the tokenizer files (written by the stage next to it).

Loading uses safetensors only; nothing is unpickled.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

from pagerl.data.types import Request
from pagerl.errors import PageRLError
from pagerl.models.build import resolve_attn_implementation, resolve_dtype
from pagerl.models.candidates import CandidatePointer
from pagerl.rewards.clicks import ITEM_OUTPUTS, PAGE_OUTPUTS
from pagerl.tokenization.serialize import encode_prompt, encode_response
from pagerl.tokenization.tokenizer import load_policy_tokenizer

HEADS_FILE = "reward_model.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "pagerl-reward-model"
FORMAT_VERSION = 1
PAGE_POOLING = ("mean", "eos")
# Head weights start small (as Hugging Face initialises linear layers): scores
# start near zero, so the first steps learn instead of undoing a random scale.
HEAD_INIT_STD = 0.02


class RewardModelError(PageRLError, ValueError):
    """A reward-model directory or a scoring request is not usable (bad input, not a bug)."""


class RewardModel(nn.Module):
    """Backbone + page head + item head (see the module docstring)."""

    def __init__(self, backbone: PreTrainedModel, *, index_token_ids: Sequence[int] = (),
                 candidate_echo: Optional[bool] = None, page_pooling: str = "mean", seed: int = 0,
                 marker_len: int = 0, item_output: str = "score", page_output: str = "score") -> None:
        super().__init__()
        self.model = backbone
        hidden = int(backbone.config.hidden_size)
        dtype = next(backbone.parameters()).dtype
        self.page_head = nn.Linear(hidden, 1, dtype=dtype)
        self.item_head = nn.Linear(hidden, 1, dtype=dtype)
        self.index_token_ids = [int(t) for t in index_token_ids]
        # Tokens of the response marker ending every prompt (not part of the last candidate's content).
        self.marker_len = int(marker_len)
        # Default: echo when the index tokens are known (the stage always passes both).
        self.candidate_echo = bool(self.index_token_ids) if candidate_echo is None else bool(candidate_echo)
        if page_pooling not in PAGE_POOLING:
            raise RewardModelError(f"page_pooling: expected one of {PAGE_POOLING}, got {page_pooling!r}")
        self.page_pooling = page_pooling
        if item_output not in ITEM_OUTPUTS or page_output not in PAGE_OUTPUTS:
            raise RewardModelError(f"item_output / page_output: expected one of {ITEM_OUTPUTS} / {PAGE_OUTPUTS}, "
                                   f"got {item_output!r} / {page_output!r}")
        # What a scored reward is (pagerl.rewards.clicks): the raw head output, or its click units.
        self.item_output, self.page_output = item_output, page_output
        if self.candidate_echo and not self.index_token_ids:
            raise RewardModelError("candidate_echo needs the tokenizer's candidate index token ids")
        # The echo's spans, contents and lookup (only its echo; the pointer term is the policy's).
        self.candidates = CandidatePointer(self.index_token_ids, self.marker_len) if self.candidate_echo else None
        # Seeded locally; small (HEAD_INIT_STD) but not zero, so an untrained
        # model's scores differ per page: a fair random baseline for the report.
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for head in (self.page_head, self.item_head):
                head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * HEAD_INIT_STD)
                head.bias.zero_()

    @property
    def config(self) -> Any:
        return self.model.config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        slot_positions: torch.Tensor,
        eos_positions: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(page [N], item [N, K])`` float32 rewards of ``N`` right-padded sequences.

        ``slot_positions[n, k]`` is the position of slot k's index token in row
        n (any valid position, e.g. 0, where a row has fewer slots: the value
        there is meaningless and must be masked by the caller);
        ``eos_positions[n]`` the position of the row's EOS.
        """
        embeds = self.model.get_input_embeddings()(input_ids)
        if self.candidate_echo:
            embeds = self._echo_candidates(input_ids, embeds, slot_positions)
        hidden = self.model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        slots = hidden[rows[:, None], slot_positions]
        item = self.item_head(slots).squeeze(-1)
        if self.page_pooling == "eos":
            page_state = hidden[rows, eos_positions]
        else:  # "mean": EOS and every slot's state (slot position 0 marks a padded slot)
            valid = (slot_positions > 0).to(slots.dtype)[..., None]
            page_state = (hidden[rows, eos_positions] + (slots * valid).sum(1)) / (1.0 + valid.sum(1))
        page = self.page_head(page_state).squeeze(-1)
        return page.float(), item.float()

    def scaled(self, page: torch.Tensor, item: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Raw head outputs on the scale ``item_output`` / ``page_output`` name (:mod:`pagerl.rewards.clicks`)."""
        if self.item_output == "click_probability":
            item = torch.sigmoid(item)
        if self.page_output == "expected_clicks":
            page = torch.exp(page)
        return page, item

    def _echo_candidates(self, input_ids: torch.Tensor, embeds: torch.Tensor,
                         slot_positions: torch.Tensor) -> torch.Tensor:
        """Add to each response index token its candidate's content (:mod:`pagerl.models.candidates`).

        Without this the backbone must learn a pointer lookup (response
        ``<cj>`` -> the words after prompt ``<cj>``) from the weak pairwise
        signal alone, which a fresh tiny model did not manage in a few hundred
        steps; with it the slot token starts out knowing what item it is, and
        attention is left to relate it to the user, the query and the items
        above. Only response tokens are echoed (the first slot ends the prompt).
        """
        prompt_end = slot_positions[:, 0]
        contents = self.candidates.contents(input_ids, embeds, prompt_end)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
        return self.candidates.echo(input_ids, embeds, contents, where=positions >= prompt_end[:, None])

    # -- checkpoints ---------------------------------------------------------------------
    def save_pretrained(
        self,
        directory: str | Path,
        state_dict: Optional[Dict[str, torch.Tensor]] = None,
        safe_serialization: bool = True,
    ) -> None:
        """Write config, weights and head description (the signature ``ZeroPolicy.save`` calls)."""
        if not safe_serialization:
            raise RewardModelError("reward models are saved as safetensors only")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if state_dict is None:
            state_dict = {n: p.detach() for n, p in self.named_parameters()}
        tensors = {n: t.detach().cpu().contiguous() for n, t in state_dict.items()}
        save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        config = copy.deepcopy(self.model.config)
        config.architectures = [type(self.model).__name__]
        config.save_pretrained(directory)
        (directory / HEADS_FILE).write_text(json.dumps({
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "backbone": type(self.model).__name__,
            "hidden_size": int(self.model.config.hidden_size),
            "heads": {
                "page": {"weights": "page_head", "reads": "EOS token: the whole request and page"},
                "item": {"weights": "item_head",
                         "reads": "each slot's index token: the request and the slots up to it (causal)"},
            },
            "shared_backbone": True,
            "candidate_echo": self.candidate_echo,
            "page_pooling": self.page_pooling,
            "item_output": self.item_output,
            "page_output": self.page_output,
            "index_token_ids": self.index_token_ids,
            "response_marker_len": self.marker_len,
        }, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, dtype: Optional[str] = None,
                        attn_implementation: str = "sdpa") -> "RewardModel":
        """Load a directory written by :meth:`save_pretrained` (safetensors only)."""
        directory = Path(directory)
        heads = read_heads_config(directory)
        weights_path = directory / WEIGHTS_FILE
        if not weights_path.is_file():
            raise RewardModelError(f"{weights_path}: missing; a reward-model directory holds its weights there")
        try:
            config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise RewardModelError(f"{directory}/config.json: cannot read the backbone config: {exc}") from exc
        torch_dtype = resolve_dtype(dtype) if dtype else getattr(config, "dtype", None) or torch.float32
        if isinstance(torch_dtype, str):
            torch_dtype = resolve_dtype(torch_dtype)
        config._attn_implementation = resolve_attn_implementation(attn_implementation)
        with torch.random.fork_rng(devices=[]):
            backbone = AutoModel.from_config(config, dtype=torch_dtype)
            model = cls(backbone, index_token_ids=heads.get("index_token_ids", ()),
                        candidate_echo=bool(heads.get("candidate_echo", False)),
                        marker_len=int(heads.get("response_marker_len", 0)),
                        page_pooling=str(heads.get("page_pooling", "eos")),
                        item_output=str(heads.get("item_output", "score")),
                        page_output=str(heads.get("page_output", "score")))
        if int(heads.get("hidden_size", config.hidden_size)) != int(config.hidden_size):
            raise RewardModelError(f"{directory}/{HEADS_FILE}: hidden_size disagrees with config.json")
        state = load_file(str(weights_path))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RewardModelError(
                f"{weights_path}: weights do not match the model (missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}); was the directory written by a reward-model stage?"
            )
        return model.to(torch_dtype)


def read_heads_config(directory: Path) -> Dict[str, Any]:
    path = Path(directory) / HEADS_FILE
    if not path.is_file():
        raise RewardModelError(
            f"{path}: missing; {directory} is not a reward-model directory (expected the output of the rm "
            "stage, e.g. <run_dir>/rm/final)"
        )
    try:
        heads = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RewardModelError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if heads.get("format") != FORMAT or int(heads.get("version", -1)) > FORMAT_VERSION:
        raise RewardModelError(
            f"{path}: expected format {FORMAT!r} version <= {FORMAT_VERSION}, got "
            f"{heads.get('format')!r} version {heads.get('version')!r}"
        )
    return heads


# ------------------------------------------------------------------------ batching
def pack_sequences(
    rows: Sequence[Tuple[Sequence[int], Sequence[int]]], pad_id: int
) -> Dict[str, torch.Tensor]:
    """Right-pad ``(prompt_ids, response_ids)`` rows; responses are K index tokens + EOS.

    Returns ``input_ids``, ``attention_mask`` [N, L], ``slot_positions`` [N, K]
    (K the longest page), ``slot_valid`` [N, K] and ``eos_positions`` [N].
    """
    width = max(len(p) + len(r) for p, r in rows)
    k_max = max(len(r) - 1 for _, r in rows)
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    slot_positions = torch.zeros((n, k_max), dtype=torch.long)
    slot_valid = torch.zeros((n, k_max), dtype=torch.bool)
    eos_positions = torch.zeros(n, dtype=torch.long)
    for i, (prompt, response) in enumerate(rows):
        ids = list(prompt) + list(response)
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[i, : len(ids)] = 1
        k = len(response) - 1
        slot_positions[i, :k] = torch.arange(len(prompt), len(prompt) + k)
        slot_valid[i, :k] = True
        eos_positions[i] = len(ids) - 1
    return {"input_ids": input_ids, "attention_mask": attention, "slot_positions": slot_positions,
            "slot_valid": slot_valid, "eos_positions": eos_positions}


# ------------------------------------------------------------------------ scoring side
class RewardModels:
    """Scores pages with a trained reward model: the API reward workers call.

    ``score(requests, pages)`` returns ``(page_rewards [B], item_rewards [B, K])``
    float32 CPU tensors, K the longest page of the batch (entries past a
    shorter page's length are 0). Pages must be valid (K distinct candidates of
    their request); an invalid one raises :class:`RewardModelError` naming its
    index in the batch.
    """

    def __init__(self, model: RewardModel, tokenizer: Any, *, batch_size: int = 64,
                 device: str | torch.device = "cpu") -> None:
        if batch_size < 1:
            raise RewardModelError(f"RewardModels: batch_size must be at least 1, got {batch_size}")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.device = torch.device(device)

    @torch.no_grad()
    def score(self, requests: List[Request], pages: List[List[str]]) -> Tuple[torch.Tensor, torch.Tensor]:
        if len(requests) != len(pages):
            raise RewardModelError(f"score: {len(requests)} requests but {len(pages)} pages; pass one page per request")
        if not requests:
            return torch.zeros(0), torch.zeros(0, 0)
        rows = self._encode(requests, pages)
        k_max = max(len(r) - 1 for _, r in rows)
        page_out = torch.empty(len(rows), dtype=torch.float32)
        item_out = torch.zeros(len(rows), k_max, dtype=torch.float32)
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            batch = pack_sequences(chunk, self.tokenizer.pad_token_id)
            page, item = self.model(
                batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device),
                batch["slot_positions"].to(self.device), batch["eos_positions"].to(self.device),
            )
            page, item = self.model.scaled(page, item)
            item = item.cpu().masked_fill(~batch["slot_valid"], 0.0)
            page_out[start : start + len(chunk)] = page.cpu()
            item_out[start : start + len(chunk), : item.shape[1]] = item
        return page_out, item_out

    def _encode(self, requests: Sequence[Request], pages: Sequence[Sequence[str]]) -> List[Tuple[List[int], List[int]]]:
        prompts: Dict[int, List[int]] = {}
        rows = []
        for index, (request, page) in enumerate(zip(requests, pages)):
            try:
                key = id(request)
                if key not in prompts:
                    prompts[key] = encode_prompt(self.tokenizer, request)
                rows.append((prompts[key], encode_response(self.tokenizer, request, list(page))))
            except ValueError as exc:
                raise RewardModelError(f"score: page {index} (request {request.request_id!r}): {exc}") from None
        return rows


def load_reward_models(rm_final_dir: str | Path, *, batch_size: int = 64, device: str | torch.device = "cpu",
                       dtype: Optional[str] = None, attn_implementation: str = "sdpa") -> RewardModels:
    """The trained reward models of ``<run_dir>/rm/final`` (or any checkpoint of the stage)."""
    directory = Path(rm_final_dir)
    if not directory.is_dir():
        raise RewardModelError(f"{directory}: not a directory (expected a reward-model directory such as <run_dir>/rm/final)")
    model = RewardModel.from_pretrained(directory, dtype=dtype, attn_implementation=attn_implementation)
    tokenizer = load_policy_tokenizer(str(directory))
    return RewardModels(model, tokenizer, batch_size=batch_size, device=device)
