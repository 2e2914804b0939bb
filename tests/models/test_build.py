"""Building and loading the policy: tiny families, a Hugging Face directory, checkpoints, errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from pagerl.config.schema import ModelConfig, TinyModelConfig
from pagerl.data.types import Item, Request, User
from pagerl.models.build import ModelBuildError, build_policy, load_policy
from pagerl.models.generate import generate_pages
from pagerl.tokenization import build_tokenizer, encode_prompt, load_policy_tokenizer

TINY = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, intermediate_size=64)


def make_request(request_id: str = "r1", n: int = 5, k: int = 3) -> Request:
    candidates = [Item(f"i{j}", f"canvas sneaker {j}", ["shoes", "bags"][j % 2], 9.0 * (j + 1)) for j in range(n)]
    return Request(request_id, User("u", history_categories=["shoes"]), candidates, k, query="red")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(ModelConfig(tiny=TINY), [make_request()])


def params(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("family, cls", [("llama", "LlamaForCausalLM"), ("qwen2", "Qwen2ForCausalLM")])
def test_tiny_model_is_sized_by_the_tokenizer(tokenizer, family, cls):
    cfg = ModelConfig(tiny=TinyModelConfig(**{**vars(TINY), "family": family}))
    model = build_policy(cfg, tokenizer, seed=3)
    assert type(model).__name__ == cls
    assert model.config.vocab_size == len(tokenizer)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    assert (model.config.pad_token_id, model.config.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)
    assert model.config._attn_implementation == "sdpa"
    ids = torch.tensor([encode_prompt(tokenizer, make_request())])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_seed_fixes_the_weights_and_leaves_global_rng_alone(tokenizer):
    cfg = ModelConfig(tiny=TINY)
    state = torch.get_rng_state()
    a, b, c = (params(build_policy(cfg, tokenizer, seed=s)) for s in (7, 7, 8))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_dtype_and_eager_attention_come_from_the_config(tokenizer):
    model = build_policy(ModelConfig(tiny=TINY, dtype="bfloat16", attn_implementation="eager"), tokenizer, seed=0)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config._attn_implementation == "eager"


@pytest.mark.skipif(
    torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None,
    reason="flash attention can run here",
)
def test_flash_attention_without_gpu_is_a_clear_error(tokenizer):
    cfg = ModelConfig(tiny=TINY, attn_implementation="flash_attention_2")
    with pytest.raises(ModelBuildError, match=r"model\.attn_implementation.*`gpu` extra.*sdpa"):
        build_policy(cfg, tokenizer, seed=0)


@pytest.mark.parametrize(
    "cfg, key",
    [
        (ModelConfig(tiny=TINY, attn_implementation="flash"), r"model\.attn_implementation: expected one of"),
        (ModelConfig(tiny=TINY, dtype="float64"), r"model\.dtype: expected one of"),
        (ModelConfig(tiny=TinyModelConfig(family="gpt2")), r"model\.tiny\.family: expected one of"),
        (
            ModelConfig(tiny=TinyModelConfig(max_position_embeddings=100)),
            r"model\.tiny\.max_position_embeddings: the model handles 100 positions",
        ),
        (ModelConfig(source="/no/such/model"), r"model\.source: '/no/such/model' is not a model PageRL can load"),
    ],
)
def test_bad_model_config_is_a_clear_error(tokenizer, cfg, key):
    with pytest.raises(ModelBuildError, match=key):
        build_policy(cfg, tokenizer, seed=0)


def hf_model_dir(path) -> str:
    """A real (tiny) Hugging Face causal-LM directory: Qwen2 weights + a byte-level BPE tokenizer, no pad."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["user shoes bags query red page canvas sneaker price"] * 5, trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    config = Qwen2Config(
        vocab_size=len(hf_tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=hf_tok.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        Qwen2ForCausalLM(config).save_pretrained(path)
    hf_tok.save_pretrained(path)
    return str(path)


def test_any_hf_causal_lm_directory_works(tmp_path):
    path = hf_model_dir(tmp_path / "hf")
    cfg = ModelConfig(source=path, max_candidates=8)
    original = Qwen2ForCausalLM.from_pretrained(path).get_input_embeddings().weight.detach().clone()

    tokenizer = load_policy_tokenizer(cfg)
    assert len(tokenizer) == original.shape[0] + 8 + 1  # <c0>..<c7> and <pad>
    model = build_policy(cfg, tokenizer, seed=0)
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == len(tokenizer) and model.get_output_embeddings().weight.shape[0] == len(tokenizer)
    assert torch.equal(emb[: original.shape[0]], original)  # pretrained rows are kept
    assert torch.isfinite(emb).all()
    assert model.config.pad_token_id == tokenizer.pad_token_id

    requests = [make_request("a", n=5, k=3), make_request("b", n=8, k=2)]
    pages = generate_pages(model, tokenizer, requests, greedy=False, seed=1)
    assert all(p.valid for p in pages)
    assert [len(p.item_ids) for p in pages] == [3, 2]


def test_checkpoint_round_trip_is_safetensors_only(tmp_path, tokenizer):
    cfg = ModelConfig(tiny=TINY)
    model = build_policy(cfg, tokenizer, seed=5)
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    loaded = load_policy(tmp_path / "ckpt", cfg)
    assert all(torch.equal(p, params(loaded)[k]) for k, p in params(model).items())
    request = make_request()
    assert generate_pages(loaded, load_policy_tokenizer(tmp_path / "ckpt"), [request]) == generate_pages(
        model, tokenizer, [request]
    )

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (tmp_path / "ckpt" / "config.json").rename(pickled / "config.json")
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(ModelBuildError, match="no \\*.safetensors weights"):
        load_policy(pickled, cfg)
    with pytest.raises(ModelBuildError, match="is not a directory"):
        load_policy(tmp_path / "missing", cfg)
