"""Weight sync: bucketing, receiver checks, and real syncs from a ZeRO-3 group of two trainer
ranks (Ray actors running DeepSpeed over gloo) to a rollout worker, over both transports.

After a training step changes the trainer's weights, the rollout's own logprobs (teacher-forced
decoding) must equal those computed from the trainer's gathered weights; the version advances
with one remote call per receiver per sync; a corrupted sync is caught by verify_sync."""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import os
import time

import pytest
import torch

from pagerl.models.build import load_policy
from pagerl.models.constrained import constrain_response_logits
from pagerl.models.logprobs import policy_logits
from pagerl.rl.roles.groups import ActorGroup
from pagerl.rl.roles.layout import rollout_args
from pagerl.rl.roles.rollout import RolloutWorker
from pagerl.rl.weight_sync import (
    BucketSpec,
    WeightBucket,
    WeightSender,
    WeightSync,
    WeightSyncError,
    bucket_bytes_of,
    check_manifest,
    copy_bucket,
    host_store,
    iter_buckets,
    plan_buckets,
    verify_sync,
)
from pagerl.tokenization import candidate_token_ids
from pagerl.tokenization.tokenizer import load_policy_tokenizer

TIMEOUT_S = 180  # generous: starting DeepSpeed ranks on a busy 2-core machine is slow


# ------------------------------------------------------------------------------ in-process
def test_buckets_respect_the_size_and_a_bigger_parameter_travels_alone(tiny_policy):
    model = load_policy(tiny_policy.directory, tiny_policy.recipe.model)
    named = list(model.named_parameters())
    limit = 6_000  # below the MLP and embedding matrices (8 KB), above the attention ones
    plan = plan_buckets(model, limit, torch.float32)
    assert [n for spec in plan for n in spec.names] == [n for n, _ in named]  # every parameter once, in order
    big = [spec for spec in plan if spec.nbytes > limit]
    assert big and all(len(spec.names) == 1 for spec in big)  # e.g. the embeddings
    assert any(len(spec.names) > 1 for spec in plan)
    for spec, following in zip(plan, plan[1:]):
        assert spec.nbytes <= limit or len(spec.names) == 1
        # greedy: the next parameter did not fit any more
        assert spec.nbytes + following.numels[0] * 4 > limit
    params = dict(named)
    buckets = list(iter_buckets(model, limit, torch.float32))
    assert [b.spec for b in buckets] == plan
    for bucket in buckets:
        assert torch.equal(bucket.flat, torch.cat([params[n].detach().reshape(-1) for n in bucket.spec.names]))
    half = list(iter_buckets(model, limit, torch.bfloat16))
    assert all(b.flat.dtype == torch.bfloat16 for b in half)
    assert sum(b.spec.nbytes for b in half) * 2 == sum(b.spec.nbytes for b in buckets)
    assert all(b.flat is None for b in iter_buckets(model, limit, keep=False))


def test_the_receiver_checks_names_shapes_and_dtypes_before_copying(tiny_policy):
    recipe = tiny_policy.recipe
    source, target = load_policy(tiny_policy.directory, recipe.model), load_policy(tiny_policy.directory, recipe.model)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.01)
    params = dict(target.named_parameters())
    plan = plan_buckets(source, 20_000)
    check_manifest(plan, params, version=1)
    first = plan[0]
    renamed = [BucketSpec(("model.no_such.weight",) + first.names[1:], first.shapes, first.dtype), *plan[1:]]
    with pytest.raises(WeightSyncError, match=rf"no weights sent for {first.names[0]}.*unexpected weights "
                                              r"model.no_such.weight"):
        check_manifest(renamed, params, version=2)
    reshaped = [BucketSpec(first.names, ((1, 2),) + first.shapes[1:], first.dtype), *plan[1:]]
    with pytest.raises(WeightSyncError, match=rf"{first.names[0]}: sent shape \[1, 2\]"):
        check_manifest(reshaped, params, version=2)
    with pytest.raises(WeightSyncError, match=r"sent as bfloat16, the rollout model holds float32"):
        check_manifest(plan_buckets(source, 20_000, torch.bfloat16), params, version=2)
    for bucket in iter_buckets(source, 20_000):
        copy_bucket(bucket, params)
    for (name, a), b in zip(source.named_parameters(), target.parameters()):
        assert torch.equal(a, b), name
    with pytest.raises(WeightSyncError, match="expected"):
        copy_bucket(WeightBucket(first, torch.zeros(3)), params)


def test_verify_sync_reports_the_worst_token_and_names_the_key():
    trainer = torch.tensor([[-1.0, -2.0, float("-inf")], [-0.5, 0.0, 0.0]], dtype=torch.float64)
    rollout = torch.tensor([[-1.0, -2.00002, float("-inf")], [-0.5, 0.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert verify_sync(trainer, rollout, mask, threshold=1e-4, step=3) == pytest.approx(2e-5, rel=1e-3)
    with pytest.raises(WeightSyncError, match=r"step 3: .* up to 2e-05 .* rl.sync.max_logprob_delta=1e-05"):
        verify_sync(trainer, rollout, mask, threshold=1e-5, step=3)
    assert verify_sync([[-1.0, 0.0], [-3.0]], [[-1.0, 0.0], [-3.0]], None, 0.0, step=1) == 0.0
    with pytest.raises(WeightSyncError, match="up to inf"):  # -inf on one side only
        verify_sync([[-1.0, float("-inf")]], [[-1.0, -2.0]], None, 1e-4, step=4)


# ------------------------------------------------------------------------------ ZeRO-3 over Ray
class ZeroTrainer:
    """A minimal trainer rank: torch.distributed over gloo + DeepSpeed ZeRO-3 on the tiny policy."""

    def __init__(self, recipe, policy_dir: str) -> None:
        torch.set_num_threads(1)
        self.recipe, self.policy_dir = recipe, policy_dir

    def start(self, rank: int, world: int, host: str, port: int) -> dict:
        import torch.distributed as dist

        from pagerl.config.schema import DistributedConfig
        from pagerl.models.logprobs import CausalLMLogprobs
        from pagerl.train.engine import ZeroPolicy

        os.environ.update(MASTER_ADDR=host, MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        timeout = datetime.timedelta(seconds=TIMEOUT_S)
        store = dist.TCPStore(host, port, None, False, timeout=timeout)
        dist.init_process_group("gloo", store=dist.PrefixStore("trainers/", store), rank=rank, world_size=world,
                                timeout=timeout)
        self.rank = rank
        model = load_policy(self.policy_dir, self.recipe.model)
        model.train()
        dist_cfg = DistributedConfig(num_workers=world, zero_stage=3, timeout_s=TIMEOUT_S)
        self.policy = ZeroPolicy(CausalLMLogprobs(model), model, dist_cfg, dtype="float32", lr=0.03,
                                 weight_decay=0.0, micro_batch_size=4, grad_accum_steps=1, grad_clip=1.0)
        self.senders = {name: WeightSender(dataclasses.replace(self.recipe.rl.sync, transport=name), rank=rank,
                                           dtype="float32", timeout_s=TIMEOUT_S)
                        for name in ("object_store", "collective")}
        head = model.get_output_embeddings().weight
        return {"rank": rank, "partitioned": hasattr(head, "ds_id") and head.numel() == 0}

    def train_step(self, batch: dict) -> float:
        logp = self.policy.forward(batch["input_ids"], batch["attention_mask"], batch["labels"])
        loss = -(logp.sum() / (batch["labels"][:, 1:] != -100).sum())
        self.policy.backward_and_step(loss)
        return float(loss)

    def full_weights(self):
        weights = self.policy.full_fp32_weights()  # collective: every rank gathers
        return weights if self.rank == 0 else None

    def setup_weight_sync(self, spec: dict) -> dict:
        return self.senders[spec["transport"]].setup(spec)

    def push_object_store(self, version: int):
        return self.senders["object_store"].push(self.policy.hf_model, version)

    def push_collective(self, version: int):
        return self.senders["collective"].push(self.policy.hf_model, version)

    def push_corrupted(self, version: int):
        """An object-store push whose second bucket is perturbed on the way (a broken transport)."""
        sender, model = self.senders["object_store"], self.policy.hf_model
        plan = plan_buckets(model, sender.bucket_bytes, sender.dtype)
        buckets = iter_buckets(model, sender.bucket_bytes, sender.dtype, keep=self.rank == 0)
        perturbed = (b._replace(flat=b.flat + 0.05) if k == 1 and b.flat is not None else b
                     for k, b in enumerate(buckets))
        payload = sender.transport.send(perturbed, plan, version, self.rank == 0)
        if self.rank != 0:
            return None
        return {"payload": payload, "bytes": sum(s.nbytes for s in plan), "buckets": len(plan), "seconds": 0.0}


@pytest.fixture(scope="module")
def zero3(tiny_policy, make_recipe, local_ray):
    recipe = make_recipe("rl.sync.bucket_mb=0.01")
    store, port = host_store("127.0.0.1", TIMEOUT_S)  # the trainers' own default group
    trainers = ActorGroup("trainer", ZeroTrainer, 2, num_cpus=0.5, init_args=(recipe, str(tiny_policy.directory)),
                          env={"GLOO_SOCKET_IFNAME": "lo"}, timeout_s=TIMEOUT_S)
    rollouts = ActorGroup("rollout", RolloutWorker, 1, num_cpus=0.5,
                          init_args=rollout_args(recipe, tiny_policy.directory),
                          env={"GLOO_SOCKET_IFNAME": "lo"}, timeout_s=TIMEOUT_S)
    try:
        started = trainers.call_each("start", [(r, 2, "127.0.0.1", port) for r in range(2)])
        assert all(s["partitioned"] for s in started), "the head weight must be a ZeRO-3 partition"
        syncs = {name: WeightSync(trainers, rollouts, dataclasses.replace(recipe.rl.sync, transport=name),
                                  TIMEOUT_S) for name in ("object_store", "collective")}
        members = syncs["collective"].members  # trainer rank 0, then the rollout worker
        assert [m["rank"] for m in members] == [0, 1] and {m["backend"] for m in members} == {"gloo"}
        assert {m["host"] for m in members} == {m["device_host"] for m in members} == {"127.0.0.1"}
        pages = rollouts.call_one(0, "generate", tiny_policy.requests[:6], 11, 0)
        yield dict(recipe=recipe, trainers=trainers, rollouts=rollouts, syncs=syncs, pages=pages,
                   versions=itertools.count(1), store=store)
    finally:
        trainers.kill()
        rollouts.kill()


def training_batch(pages, pad: int) -> dict:
    """The probe pages as a teacher-forced batch: response tokens scored, prompts and padding not."""
    rows = [p + r for p, r in zip(pages.prompt_ids, pages.response_ids)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (p, r) in enumerate(zip(pages.prompt_ids, pages.response_ids)):
        ids[b, : len(p) + len(r)] = torch.tensor(p + r)
        labels[b, len(p) : len(p) + len(r)] = torch.tensor(r)
        mask[b, : len(p) + len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def logprobs_from_weights(tiny_policy, weights, pages):
    """Constrained per-token logprobs of the pages by a full forward pass of a model holding ``weights``."""
    model = load_policy(tiny_policy.directory, tiny_policy.recipe.model).eval()
    tokenizer = load_policy_tokenizer(tiny_policy.directory)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(weights[name])
    rows = []
    for b in range(len(pages)):
        prompt, response = pages.prompt_ids[b], pages.response_ids[b]
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logits = policy_logits(model, ids, prompt_end=torch.tensor([len(prompt)]))[:, len(prompt) - 1 : -1]
        masked = constrain_response_logits(logits, torch.tensor([response]), candidate_token_ids(tokenizer, 12),
                                           [pages.num_candidates[b]], [pages.page_sizes[b]],
                                           tokenizer.eos_token_id, tokenizer.pad_token_id)
        rows.append(torch.log_softmax(masked[0], -1).gather(-1, torch.tensor(response)[:, None])[:, 0].tolist())
    return rows


def rollout_probe(zero3):
    pages = zero3["pages"]
    return zero3["rollouts"].call_one(0, "probe_logprobs", pages.prompt_ids, pages.response_ids,
                                      pages.num_candidates, pages.page_sizes)


@pytest.mark.parametrize("transport", ["object_store", "collective"])
def test_a_zero3_sync_gives_the_rollout_the_trainers_weights(tiny_policy, zero3, transport):
    trainers, rollouts, pages = zero3["trainers"], zero3["rollouts"], zero3["pages"]
    tokenizer = load_policy_tokenizer(tiny_policy.directory)
    losses = trainers.call("train_step", training_batch(pages, tokenizer.pad_token_id))
    assert len(set(losses)) == 1  # both ranks saw the same batch
    reference = logprobs_from_weights(tiny_policy, trainers.call("full_weights")[0], pages)
    with pytest.raises(WeightSyncError, match="rl.sync.max_logprob_delta"):  # the step moved the policy
        verify_sync(reference, rollout_probe(zero3), None, threshold=1e-3, step=0)

    calls_before = rollouts.call_one(0, "stats")["load_calls"]
    version = next(zero3["versions"])
    stats = zero3["syncs"][transport].sync(version, push_method=f"push_{transport}")
    assert rollouts.call_one(0, "version") == version
    assert rollouts.call_one(0, "stats")["load_calls"] == calls_before + 1  # one call per receiver per sync
    model = load_policy(tiny_policy.directory, tiny_policy.recipe.model)
    assert stats.bytes == sum(p.numel() * 4 for p in model.parameters())
    assert stats.buckets == len(plan_buckets(model, bucket_bytes_of(0.01), torch.float32)) > 3
    assert stats.version == version and stats.transport == transport and stats.remote_calls == 1
    print(f"\n[sync {transport}] {stats}")

    delta = verify_sync(reference, rollout_probe(zero3), None, threshold=1e-5, step=version)
    assert delta < 1e-5


def test_a_corrupted_sync_is_caught_and_a_good_one_repairs_it(tiny_policy, zero3):
    trainers, pages, sync = zero3["trainers"], zero3["pages"], zero3["syncs"]["object_store"]
    reference = logprobs_from_weights(tiny_policy, trainers.call("full_weights")[0], pages)
    threshold = zero3["recipe"].rl.sync.max_logprob_delta
    bad = next(zero3["versions"])
    sync.sync(bad, push_method="push_corrupted")
    with pytest.raises(WeightSyncError, match=rf"at step {bad}: .*rl.sync.max_logprob_delta=0.0001"):
        verify_sync(reference, rollout_probe(zero3), None, threshold=threshold, step=bad)
    good = next(zero3["versions"])
    sync.sync(good, push_method="push_object_store")
    assert verify_sync(reference, rollout_probe(zero3), None, threshold=threshold, step=good) < 1e-5
    with pytest.raises(WeightSyncError, match=f"version {bad} refused: this rollout worker holds the newer "
                                              f"version {good}"):
        sync.sync(bad, push_method="push_object_store")
    # over the collective every member refuses together (no one waits out the timeout), and the
    # group stays usable
    started = time.monotonic()
    with pytest.raises(WeightSyncError, match="refused"):
        zero3["syncs"]["collective"].sync(bad, push_method="push_collective")
    assert time.monotonic() - started < 30
    again = next(zero3["versions"])
    zero3["syncs"]["collective"].sync(again, push_method="push_collective")
    assert zero3["rollouts"].call_one(0, "version") == again
