"""CausalLMLogprobs against the plain Hugging Face forward (full logits -> log_softmax -> gather).

Tiny LlamaForCausalLM (untied head) and Qwen2ForCausalLM (tied embeddings)
built from configs: padding on either side, prompt tokens masked with -100,
temperature != 1, entropies, and gradients of every parameter. A last test runs
the wrapper under a real single-process DeepSpeed ZeRO-3 engine (gloo, CPU),
where the LM-head weight is partitioned and must be gathered for the wrapper's
forward and backward.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from pagerl.models.logprobs import CausalLMLogprobs, sum_per_sequence

VOCAB = 301


def tiny_model(family: str, seed: int = 0):
    """A 2-layer, hidden-32 model whose weights are drawn from an explicit generator (not HF's global-RNG init)."""
    common = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # a tied weight is one Parameter, drawn once
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            else:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
    model.eval()  # no dropout: both paths must see the same function
    return model


def batch(seed: int = 0):
    """3 rows of length 10: full, right-padded, left-padded; prompts (first 3 real tokens) unscored."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, :4] = 0
    labels = ids.masked_fill(mask == 0, -100)
    for row in range(3):
        first = int(mask[row].nonzero()[0])
        labels[row, first : first + 3] = -100
    return ids, mask, labels


def hf_reference(model, ids, mask, labels, temperature):
    """The plain path: full logits, log_softmax, gather; 0 where the label is -100."""
    logits = model(input_ids=ids, attention_mask=mask).logits.float() / temperature
    logp_all = torch.log_softmax(logits[:, :-1], dim=-1)
    tgt = labels[:, 1:]
    scored = tgt != -100
    logp = logp_all.gather(-1, tgt.clamp_min(0).unsqueeze(-1)).squeeze(-1) * scored
    entropy = -(logp_all.exp() * logp_all).sum(-1) * scored
    return logp, entropy


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_logprobs_entropy_and_gradients_equal_the_hf_forward(family, temperature):
    model = tiny_model(family)
    ref_model = copy.deepcopy(model)
    wrapper = CausalLMLogprobs(model)
    ids, mask, labels = batch()

    logp, entropy = wrapper(ids, mask, labels, temperature=temperature, return_entropy=True)
    ref_logp, ref_entropy = hf_reference(ref_model, ids, mask, labels, temperature)
    assert logp.shape == (3, 9) and logp.dtype == torch.float32
    torch.testing.assert_close(logp, ref_logp, rtol=0, atol=2e-5)
    torch.testing.assert_close(entropy, ref_entropy, rtol=0, atol=2e-5)
    assert torch.all(logp[labels[:, 1:] == -100] == 0)

    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(3, 9, generator=g), torch.randn(3, 9, generator=g)
    ((logp * a).sum() + (entropy * b).sum()).backward()
    ((ref_logp * a).sum() + (ref_entropy * b).sum()).backward()
    ref_params = dict(ref_model.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        ref_grad = ref_params[name].grad
        err = float((p.grad - ref_grad).abs().max())
        assert err <= 1e-4 * float(ref_grad.abs().max()), f"{name}: gradient differs by {err:.3e}"
    if family == "qwen2":  # tied: one Parameter, gradient from the embedding and the head
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_default_labels_score_every_attended_token_and_sequence_sums():
    model = tiny_model("llama", seed=1)
    wrapper = CausalLMLogprobs(model)
    ids, mask, labels = batch(seed=2)
    with torch.no_grad():
        all_attended = wrapper(ids, mask)
        ref_all, _ = hf_reference(model, ids, mask, ids.masked_fill(mask == 0, -100), 1.0)
        torch.testing.assert_close(all_attended, ref_all, rtol=0, atol=2e-5)
        seq = wrapper.sequence_logprobs(ids, mask, labels, temperature=1.3)
        ref_logp, _ = hf_reference(model, ids, mask, labels, 1.3)
    torch.testing.assert_close(seq, ref_logp.sum(dim=1), rtol=0, atol=1e-4)
    torch.testing.assert_close(sum_per_sequence(ref_logp, labels), ref_logp.sum(dim=1))
    with pytest.raises(ValueError, match=r"values must be \[B, L-1\]"):
        sum_per_sequence(ref_logp, labels[:, 1:])


def test_logit_scaling_is_folded_and_softcapping_is_refused():
    model = tiny_model("llama", seed=2)
    ids, mask, labels = batch(seed=3)
    wrapper = CausalLMLogprobs(model)
    model.config.logits_scaling = 2.0  # a Granite-style head divides its logits by this
    wrapper = CausalLMLogprobs(model)
    with torch.no_grad():
        got = wrapper(ids, mask, labels)
        ref, _ = hf_reference(model, ids, mask, labels, temperature=2.0)  # same as logits / 2
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-5)
    model.config.logits_scaling = None
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        CausalLMLogprobs(model)


def test_bad_inputs_and_heads_are_refused():
    model = tiny_model("llama", seed=3)
    wrapper = CausalLMLogprobs(model)
    ids, mask, labels = batch()
    with pytest.raises(ValueError, match="labels"):
        wrapper(ids, mask, labels[:, :5])
    with pytest.raises(ValueError, match="at least 2 tokens"):
        wrapper(ids[:, :1])
    with pytest.raises(ValueError, match="temperature"):
        wrapper(ids, mask, labels, temperature=0.0)
    model.lm_head = torch.nn.Linear(32, VOCAB, bias=True)
    with pytest.raises(ValueError, match="bias"):
        CausalLMLogprobs(model)


_ZERO3_SCRIPT = textwrap.dedent(
    """
    import copy, json, os, sys
    import torch, deepspeed
    from deepspeed.utils import safe_get_full_grad
    sys.path.insert(0, os.environ["TEST_DIR"])
    from test_logprobs import tiny_model, batch, hf_reference
    from pagerl.models.logprobs import CausalLMLogprobs
    from pagerl.distributed.deepspeed_config import skip_shm_comm_op

    skip_shm_comm_op()  # as every PageRL stage does: no C++ build
    deepspeed.init_distributed(dist_backend="gloo")
    out = {}
    for family in ("llama", "qwen2"):
        model = tiny_model(family, seed=5)
        ref_model = copy.deepcopy(model)
        wrapper = CausalLMLogprobs(model)
        config = {
            "train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": 1, "train_batch_size": 3,
            "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
            "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
            "steps_per_print": 1 << 30,
        }
        opt = torch.optim.SGD(wrapper.parameters(), lr=0.0)
        engine, _, _, _ = deepspeed.initialize(model=wrapper, optimizer=opt, config=config)
        head = model.get_output_embeddings().weight
        partitioned = hasattr(head, "ds_id") and head.numel() == 0
        ids, mask, labels = batch(seed=6)
        logp, ent = engine(ids, mask, labels, temperature=0.8, return_entropy=True)
        registered = any(p is head for _, p in wrapper.ds_external_parameters())
        engine.backward((logp.sum() + 0.5 * ent.sum()))
        ref_logp, ref_ent = hf_reference(ref_model, ids, mask, labels, 0.8)
        (ref_logp.sum() + 0.5 * ref_ent.sum()).backward()
        ref_params = dict(ref_model.named_parameters())
        grad_err = max(float((safe_get_full_grad(p) - ref_params[n].grad).abs().max())
                       for n, p in model.named_parameters())
        out[family] = {
            "partitioned": partitioned, "registered": registered,
            "logp_err": float((logp - ref_logp).abs().max()), "ent_err": float((ent - ref_ent).abs().max()),
            "grad_err": grad_err,
        }
    print("RESULTS " + json.dumps(out), flush=True)
    # an undestroyed gloo group can abort the interpreter at exit ("terminate called without an
    # active exception", SIGABRT) after every result is in
    torch.distributed.destroy_process_group()
    """
)


def test_under_deepspeed_zero3_the_partitioned_head_is_gathered(tmp_path):
    pytest.importorskip("deepspeed")
    script = tmp_path / "zero3_run.py"
    script.write_text(_ZERO3_SCRIPT)
    env = dict(
        os.environ, TEST_DIR=os.path.dirname(__file__), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000),
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
        TORCH_EXTENSIONS_DIR=str(tmp_path / "torch_extensions"),
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    # DeepSpeed started on gloo without compiling anything (pagerl.distributed.deepspeed_config.skip_shm_comm_op)
    assert not (tmp_path / "torch_extensions").exists(), list((tmp_path / "torch_extensions").rglob("*"))[:5]
    results = json.loads(lines[-1][len("RESULTS "):])
    for family, res in results.items():
        assert res["partitioned"], f"{family}: the head weight was not partitioned by ZeRO-3"
        assert res["registered"], f"{family}: the head weight is not an external parameter of the wrapper"
        assert res["logp_err"] < 2e-5 and res["ent_err"] < 2e-5, (family, res)
        assert res["grad_err"] < 1e-4, (family, res)
