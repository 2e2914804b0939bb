"""Policy tokenizers: the locally fitted tiny one and a Hugging Face directory's."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from pagerl.config.schema import ModelConfig
from pagerl.data.types import Impression, Item, Request, User
from pagerl.tokenization import (
    SerializationError,
    build_tokenizer,
    candidate_token_ids,
    decode_page,
    encode_example,
    encode_prompt,
    load_policy_tokenizer,
)
from pagerl.tokenization.settings import settings_of


def make_request(request_id: str = "r1", titles=("canvas sneaker", "leather tote", "desk lamp")) -> Request:
    candidates = [Item(f"i{j}", t, ["shoes", "bags", "home"][j % 3], 12.0 * (j + 1)) for j, t in enumerate(titles)]
    return Request(request_id, User("u", history_categories=["shoes", "home"]), candidates, 2, query=None)


def bpe_tokenizer_dir(path) -> str:
    """A GPT-2-style tokenizer directory (byte-level BPE, EOS only, no pad), as pretrained LMs ship."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["user shoes home query page canvas sneaker leather tote desk lamp price"] * 5, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(path)
    return str(path)


def test_vocabulary_is_fitted_deterministically():
    cfg = ModelConfig(max_candidates=8)
    data = [make_request()]
    tok = build_tokenizer(cfg, data)
    assert build_tokenizer(cfg, data).get_vocab() == tok.get_vocab()
    assert tok.convert_ids_to_tokens(list(range(5))) == ["<pad>", "[UNK]", "<bos>", "<eos>", "<c0>"]
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)
    assert candidate_token_ids(tok, 8) == list(range(4, 12))
    assert tok.convert_ids_to_tokens(list(range(12, 18))) == [f"price_{b}" for b in range(6)]
    words = {"user", ":", "|", "page", "shoes", "bags", "home", "canvas", "sneaker", "leather", "tote", "desk", "lamp"}
    assert set(tok.get_vocab()) == set(tok.convert_ids_to_tokens(list(range(18)))) | words
    with pytest.raises(SerializationError, match="no candidate token '<c8>'"):
        candidate_token_ids(tok, 9)


def test_impressions_and_requests_fit_the_same_vocabulary():
    request = make_request()
    impression = Impression(request=request, page=["i0", "i1"], feedback=[])
    cfg = ModelConfig()
    assert build_tokenizer(cfg, [impression]).get_vocab() == build_tokenizer(cfg, [request]).get_vocab()
    with pytest.raises(SerializationError, match="row 0 is a str"):
        build_tokenizer(cfg, ["not a request"])
    with pytest.raises(SerializationError, match="no training impressions"):
        build_tokenizer(cfg, [])
    with pytest.raises(SerializationError, match="load_policy_tokenizer"):
        build_tokenizer(ModelConfig(source="/some/dir"), [request])


def test_unseen_words_become_unk():
    tok = build_tokenizer(ModelConfig(), [make_request()])
    unseen = make_request("r2", titles=("canvas zeppelin", "leather tote", "desk lamp"))
    words = tok.convert_ids_to_tokens(encode_prompt(tok, unseen))
    assert words[words.index("<c0>") + 1 : words.index("<c0>") + 3] == ["canvas", "[UNK]"]


def test_save_and_load_keep_vocabulary_and_settings(tmp_path):
    cfg = ModelConfig(max_candidates=5, max_prompt_tokens=77, price_bucket_edges=[1.0, 30.0], max_history_items=1)
    tok = build_tokenizer(cfg, [make_request()])
    tok.save_pretrained(tmp_path)
    loaded = load_policy_tokenizer(tmp_path)
    assert settings_of(loaded) == settings_of(tok)
    assert settings_of(loaded).max_prompt_tokens == 77
    assert loaded.get_vocab() == tok.get_vocab() and len(loaded) == len(tok)
    request = make_request()
    assert encode_prompt(loaded, request) == encode_prompt(tok, request)
    assert encode_example(loaded, request, ["i2", "i0"]) == encode_example(tok, request, ["i2", "i0"])


def test_unprepared_tokenizer_is_refused(tmp_path):
    path = bpe_tokenizer_dir(tmp_path)
    from transformers import AutoTokenizer

    with pytest.raises(SerializationError, match="no pagerl serialization settings"):
        encode_prompt(AutoTokenizer.from_pretrained(path), make_request())


def test_hf_tokenizer_gets_candidate_tokens_and_a_pad(tmp_path):
    path = bpe_tokenizer_dir(tmp_path / "hf")
    cfg = ModelConfig(source=path, max_candidates=6)
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(path)
    assert base.pad_token_id is None
    tok = load_policy_tokenizer(cfg)
    assert len(tok) == len(base) + 6 + 1  # <c0>..<c5> and <pad>
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert candidate_token_ids(tok, 6) == list(range(len(base), len(base) + 6))
    assert tok.bos_token_id is None

    request = make_request()
    example = encode_example(tok, request, ["i1", "i2"])
    prompt = encode_prompt(tok, request)
    assert example["input_ids"][len(prompt) :] == [len(base) + 1, len(base) + 2, tok.eos_token_id]
    assert decode_page(tok, request, example["input_ids"][len(prompt) :]).item_ids == ["i1", "i2"]
    assert tok.decode(prompt).startswith("user : shoes home |")

    # Saved and loaded again (a checkpoint), nothing is added twice.
    tok.save_pretrained(tmp_path / "ckpt")
    again = load_policy_tokenizer(tmp_path / "ckpt")
    assert len(again) == len(tok) and encode_prompt(again, request) == prompt


def test_missing_or_tiny_source_is_a_clear_error(tmp_path):
    with pytest.raises(SerializationError, match="model.source: .* is not a model PageRL can load"):
        load_policy_tokenizer(ModelConfig(source=str(tmp_path / "nope")))
    with pytest.raises(SerializationError, match="build_tokenizer"):
        load_policy_tokenizer(ModelConfig())
