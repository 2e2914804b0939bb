"""Rollout workers: lay out pages with the current policy, report how they were sampled.

A :class:`RolloutWorker` is the body of one rollout actor (and works
in-process too: tests, a debugger). It holds one policy through a *backend*
of :data:`ROLLOUT_BACKENDS` (``rl.rollout.backend``); ``hf`` runs the
Hugging Face model with PageRL's own constrained decoding loop
(:mod:`pagerl.models.generate`) on the worker's CPU or GPU. A faster engine
is one more registered backend with the same four methods.

What a worker answers:

- :meth:`RolloutWorker.generate` -- ``rl.rollout.samples_per_request`` pages
  per request (the group GRPO and RLOO compare), as a :class:`RolloutBatch`
  with everything the trainer needs and nothing it would have to recompute:
  prompt and response ids, the logprob of every sampled token under the
  distribution it was drawn from (constraint, temperature, nucleus), where
  each item token and EOS sit in the response, the parsed items, validity,
  and the policy version that produced the page. The same weights, requests
  and seed give the same pages; the worker's index does not enter, so a
  batch re-run on another worker is the same batch.
- :meth:`RolloutWorker.probe_logprobs` -- per-token logprobs of given
  responses by the rollout's own forward pass: the decoding loop itself,
  teacher-forced (:func:`pagerl.models.generate.teacher_forced_logprobs`).
  Compared with the trainer's logprobs of the same responses, it shows
  whether a weight sync arrived (:func:`pagerl.rl.weight_sync.verify_sync`).
- :meth:`RolloutWorker.heldout_pages` -- one page per held-out request,
  decoded as the eval stage decodes (``eval.*``, greedy by default) by the
  weights held: the RL stage's held-out curve (``rl.eval_every``).
- :meth:`RolloutWorker.load_weights` -- the receiving end of a weight sync:
  checks the sender's manifest against the model's parameters before
  copying anything, copies every bucket by name, then records the version.
  While a sync is being copied, and after one that failed half-way, the
  worker holds no valid version and refuses to generate.

Each sample is decoded from its own copy of the prompt; sharing one prompt
pass (and KV cache) among a request's samples would cut the prompt cost by
``samples_per_request`` and is left for later.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from pagerl.config.schema import ModelConfig, RolloutConfig
from pagerl.data.types import Request
from pagerl.distributed.compute_log import ComputeLog, Span
from pagerl.distributed.device import peak_memory_mb, worker_device
from pagerl.errors import PageRLError
from pagerl.models.build import load_policy
from pagerl.models.generate import generate_pages, teacher_forced_logprobs
from pagerl.registry import Registry, register
from pagerl.rl import weight_sync as ws
from pagerl.tokenization.serialize import encode_prompt
from pagerl.tokenization.tokenizer import load_policy_tokenizer


class RolloutError(PageRLError):
    """A rollout worker was asked for something it cannot do as configured."""


class RolloutVersionError(RolloutError):
    """A rollout worker holds other weights than the call asked for (e.g. a restarted process,
    which starts from the initial weights): it must be synced before it generates."""


ROLLOUT_BACKENDS = Registry("rl.rollout.backend")


def register_rollout_backend(name: str) -> Callable[[type], type]:
    """Add a backend class under ``name`` (a value of ``rl.rollout.backend``); names are unique.

    A backend is built as ``cls(cfg, model, policy_dir, device)`` (``cfg``: the recipe's
    ``rl.rollout``, ``model``: its ``model`` section) and has
    ``encode_prompt(request)``, ``generate(requests, seed)`` (one
    :class:`~pagerl.models.generate.GeneratedPage` per request),
    ``decode(requests, seed, options)`` (the same, decoded with the given
    ``generate_pages`` keywords: the held-out evaluation's),
    ``probe_logprobs(prompt_ids, response_ids, num_candidates, page_sizes)``
    and ``parameters()`` (name -> the tensor a weight sync copies into).
    """
    return register(ROLLOUT_BACKENDS, name)


@register_rollout_backend("hf")
class HFRolloutBackend:
    """The policy as a Hugging Face model, decoded by :mod:`pagerl.models.generate`."""

    def __init__(self, cfg: RolloutConfig, model: ModelConfig, policy_dir: str, device: torch.device) -> None:
        self.cfg = cfg
        self.model = load_policy(policy_dir, model).to(device).eval()
        self.tokenizer = load_policy_tokenizer(policy_dir)
        self._sampling = dict(temperature=float(self.cfg.temperature), top_p=float(self.cfg.top_p),
                              constrained=bool(self.cfg.constrained), batch_size=int(self.cfg.batch_size))

    def encode_prompt(self, request: Request) -> List[int]:
        return encode_prompt(self.tokenizer, request)

    def generate(self, requests: Sequence[Request], seed: int) -> List[Any]:
        return generate_pages(self.model, self.tokenizer, requests, greedy=False, seed=seed, **self._sampling)

    def decode(self, requests: Sequence[Request], seed: int, options: Dict[str, Any]) -> List[Any]:
        """One page per request decoded with ``options`` (``generate_pages`` keywords), not the rollout's."""
        return generate_pages(self.model, self.tokenizer, requests, seed=seed, **options)

    def probe_logprobs(self, prompt_ids, response_ids, num_candidates, page_sizes,
                       top_p: Optional[float] = None) -> List[List[float]]:

        sampling = dict(self._sampling, **({} if top_p is None else {"top_p": float(top_p)}))
        return teacher_forced_logprobs(self.model, self.tokenizer, prompt_ids, response_ids, num_candidates,
                                       page_sizes, **sampling)

    def parameters(self) -> Dict[str, torch.Tensor]:
        return dict(self.model.named_parameters())


@dataclass
class RolloutBatch:
    """Pages of one ``generate`` call, one entry per page in every list.

    Pages are request-major: the samples of request ``r`` are adjacent, with
    ``request_index == r`` and ``sample_index`` 0..n-1. Positions are in the
    response frame: ``item_positions[b][k]`` is where the index token of the
    page's k-th item is (0..K-1 for a valid page) and ``eos_position[b]``
    where EOS is (K for a valid page; -1 when the response has none).
    """

    request_index: List[int] = field(default_factory=list)
    sample_index: List[int] = field(default_factory=list)
    request_ids: List[str] = field(default_factory=list)
    num_candidates: List[int] = field(default_factory=list)
    page_sizes: List[int] = field(default_factory=list)
    prompt_ids: List[List[int]] = field(default_factory=list)
    response_ids: List[List[int]] = field(default_factory=list)
    token_logprobs: List[List[float]] = field(default_factory=list)
    item_positions: List[List[int]] = field(default_factory=list)
    eos_position: List[int] = field(default_factory=list)
    item_ids: List[List[str]] = field(default_factory=list)
    valid: List[bool] = field(default_factory=list)
    reasons: List[str] = field(default_factory=list)
    version: List[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.response_ids)

    @staticmethod
    def concat(batches: Sequence["RolloutBatch"], request_offsets: Optional[Sequence[int]] = None) -> "RolloutBatch":
        """One batch of several (e.g. of the workers a step's requests were split over).

        ``request_offsets[i]`` is added to batch i's ``request_index``, so
        indices refer to the requests of the whole step.
        """
        out = RolloutBatch()
        for i, batch in enumerate(batches):
            offset = 0 if request_offsets is None else int(request_offsets[i])
            for name in out.__dataclass_fields__:
                if name == "request_index":
                    out.request_index.extend(r + offset for r in batch.request_index)
                else:
                    getattr(out, name).extend(getattr(batch, name))
        return out


class RolloutWorker:
    """One rollout actor's body (see the module docstring).

    It reads the recipe's ``rl.rollout`` (``cfg``), its ``model`` section (how to load the policy in
    ``policy_dir``) and ``rl.timeout_s`` (the deadline of a collective weight sync), and is given
    those alone (:func:`pagerl.rl.roles.layout.rollout_args` picks them from a recipe).
    """

    def __init__(self, cfg: RolloutConfig, model: ModelConfig, policy_dir: str, timeout_s: float,
                 worker_index: int = 0) -> None:
        import transformers

        # One torch thread per reserved CPU unless rl.rollout.torch_threads says otherwise: workers
        # sharing a machine must not each take every core.
        torch.set_num_threads(int(cfg.torch_threads) or max(1, int(cfg.cpus_per_worker)))
        transformers.utils.logging.disable_progress_bar()  # one "Loading weights" bar per worker drowns the log
        if cfg.backend not in ROLLOUT_BACKENDS:
            raise RolloutError(f"rl.rollout.backend: expected one of {', '.join(ROLLOUT_BACKENDS)}, "
                               f"got {cfg.backend!r}")
        if int(cfg.samples_per_request) < 1:
            raise RolloutError(f"rl.rollout.samples_per_request must be at least 1, got {cfg.samples_per_request}")
        self.cfg = cfg
        self.worker_index = int(worker_index)
        self.device = worker_device(float(cfg.gpus_per_worker) > 0)
        self.backend = ROLLOUT_BACKENDS[cfg.backend](cfg, model, str(policy_dir), self.device)
        self.timeout_s = float(timeout_s)
        self._version: Optional[int] = 0  # the weights of policy_dir; None while a sync is incomplete
        self._transports: Dict[str, ws.Transport] = {}
        self.load_calls = 0
        self.compute = ComputeLog()  # when generate() and probe_logprobs() ran (pagerl.distributed.compute_log)

    # -- state ------------------------------------------------------------------------------
    def ready(self) -> Dict[str, Any]:
        return {"worker": self.worker_index, "pid": os.getpid(), "device": str(self.device), "version": self.version()}

    def version(self) -> int:
        """The policy version held (0: the initial weights; -1: a sync is incomplete)."""
        return -1 if self._version is None else self._version

    def peak_memory_mb(self) -> Dict[str, float]:
        return peak_memory_mb(self.device)

    def take_compute_spans(self) -> List[Span]:
        """When generate() and probe_logprobs() ran since the last call (pagerl.distributed.compute_log)."""
        return self.compute.take()

    def stats(self) -> Dict[str, Any]:
        return {"version": self.version(), "load_calls": self.load_calls}

    # -- rollouts ---------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request], seed: int, version: Optional[int] = None) -> RolloutBatch:
        """``samples_per_request`` pages per request; ``version`` (if given) must be the one held."""
        self._check_version(version)
        n = int(self.cfg.samples_per_request)
        repeated = [r for r in requests for _ in range(n)]
        with self.compute.span("generate"):
            pages = self.backend.generate(repeated, int(seed))
        prompts = [self.backend.encode_prompt(r) for r in requests]
        eos = self.backend.tokenizer.eos_token_id
        batch = RolloutBatch()
        for b, page in enumerate(pages):
            request = repeated[b]
            batch.request_index.append(b // n)
            batch.sample_index.append(b % n)
            batch.request_ids.append(request.request_id)
            batch.num_candidates.append(len(request.candidates))
            batch.page_sizes.append(int(request.page_size))
            batch.prompt_ids.append(prompts[b // n])
            batch.response_ids.append(list(page.response_ids))
            batch.token_logprobs.append(list(page.token_logprobs))
            # decode_page accepts items front to back, so item k is response token k
            batch.item_positions.append(list(range(len(page.item_ids))))
            batch.eos_position.append(page.response_ids.index(eos) if eos in page.response_ids else -1)
            batch.item_ids.append(list(page.item_ids))
            batch.valid.append(bool(page.valid))
            batch.reasons.append(page.reason)
            batch.version.append(self._version)
        return batch

    def heldout_pages(self, chunks: Sequence[Any], options: Dict[str, Any],
                      version: Optional[int] = None) -> List[List[Any]]:
        """One :class:`~pagerl.models.generate.GeneratedPage` per request of each ``(requests, seed)``
        chunk, decoded with ``options`` (the eval stage's decoding: :func:`pagerl.eval.pages.
        decoding_options`) by the weights held; ``version`` (if given) must be the one held."""
        self._check_version(version)
        with self.compute.span("eval"):
            return [self.backend.decode(list(requests), int(seed), dict(options)) for requests, seed in chunks]

    def _check_version(self, version: Optional[int]) -> None:
        if self._version is None or (version is not None and int(version) != self._version):
            raise RolloutVersionError(
                f"rollout worker {self.worker_index} holds policy version {self.version()}"
                f"{' (a weight sync did not complete)' if self._version is None else ''}, "
                f"asked to generate with version {version}"
            )

    def probe_logprobs(self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                       num_candidates: Sequence[int], page_sizes: Sequence[int],
                       top_p: Optional[float] = None) -> List[List[float]]:
        """Per-token logprobs of the given responses under the weights held (teacher-forced decoding),
        with the sampling nucleus, or with ``top_p`` when given."""
        with self.compute.span("probe"):
            return self.backend.probe_logprobs(prompt_ids, response_ids, num_candidates, page_sizes, top_p=top_p)

    # -- weight sync ------------------------------------------------------------------------
    def _transport(self, name: str) -> ws.Transport:
        if name not in self._transports:
            self._transports[name] = ws.transport_class(name)(self.timeout_s)
        return self._transports[name]

    def setup_weight_sync(self, spec: Dict[str, Any]) -> Dict[str, Any]:
        """Join the channel of ``spec["transport"]`` that :class:`~pagerl.rl.weight_sync.WeightSync` prepared."""
        return {"worker": self.worker_index, **self._transport(spec["transport"]).setup(spec)}

    def load_weights(self, payload: Dict[str, Any]) -> Dict[str, Any]:
        """Receive one sync; ``{"version", "bytes", "buckets", "seconds"}`` once every bucket is in."""
        self.load_calls += 1
        version = int(payload["version"])
        started = time.perf_counter()
        params = self.backend.parameters()
        # Every check (names, shapes, dtypes, not older than the version held) runs before the first
        # bucket is yielded; over a collective all members then refuse together, nobody waits.
        received = self._transport(payload["transport"]).receive(payload, params, self._version)
        nbytes = count = 0
        for bucket in received:
            self._version = None
            ws.copy_bucket(bucket, params)
            nbytes += bucket.spec.nbytes
            count += 1
        self._version = version
        return {"version": version, "bytes": nbytes, "buckets": count, "seconds": time.perf_counter() - started}
