"""Serialization of requests and pages: round trips, prompt layout, errors, invalid pages."""

from __future__ import annotations

import string
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagerl.config.schema import ModelConfig
from pagerl.data.types import Item, Request, User
from pagerl.tokenization import (
    IGNORE_INDEX,
    SerializationError,
    build_tokenizer,
    candidate_token_ids,
    decode_page,
    encode_example,
    encode_prompt,
)
from pagerl.tokenization.serialize import (
    AFTER_EOS,
    DUPLICATE,
    NO_EOS,
    OUT_OF_RANGE,
    UNKNOWN_TOKEN,
    WRONG_LENGTH,
)

CATEGORIES = ["shoes", "Bags", "home & garden", "toys", "books"]
# Words with punctuation and would-be control tokens, to check they stay text.
WORD = st.text(alphabet=string.ascii_letters + string.digits + "-_.,&'<>/", min_size=1, max_size=8) | st.sampled_from(
    ["<c0>", "<c3>", "<eos>", "<bos>", "<pad>", "[UNK]"]
)


@st.composite
def request_strategy(draw, max_candidates: int = 12) -> Request:
    n = draw(st.integers(1, max_candidates))
    candidates = [
        Item(
            item_id=f"item-{j}",
            title=" ".join(draw(st.lists(WORD, max_size=3))),
            category=draw(st.sampled_from(CATEGORIES)),
            price=draw(st.floats(0.01, 5000.0)),
        )
        for j in range(n)
    ]
    user = User(user_id="u", history_categories=draw(st.lists(st.sampled_from(CATEGORIES), max_size=20)))
    query = draw(st.none() | st.lists(WORD, min_size=1, max_size=3).map(" ".join))
    return Request(
        request_id=f"r{draw(st.integers(0, 10**6))}",
        user=user,
        candidates=candidates,
        page_size=draw(st.integers(1, n)),
        query=query,
    )


def make_request(n: int = 6, k: int = 3, request_id: str = "r1", query: str | None = "red shoes") -> Request:
    candidates = [
        Item(f"i{j}", f"canvas sneaker {j}", CATEGORIES[j % len(CATEGORIES)], 4.0 * (j + 1) ** 2) for j in range(n)
    ]
    user = User("u1", history=["a", "b", "c"], history_categories=["shoes", "toys", "shoes"])
    return Request(request_id, user, candidates, k, query=query)


CFG = ModelConfig(max_prompt_tokens=1024)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(CFG, [make_request(n=12, k=5)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=request_strategy(), data=st.data())
def test_round_trip_gives_the_page_back(request, data):
    tok = build_tokenizer(CFG, [request])
    n, k = len(request.candidates), request.page_size
    order = data.draw(st.permutations(range(n)))
    page = [request.candidates[i].item_id for i in order[:k]]

    example = encode_example(tok, request, page)
    prompt = encode_prompt(tok, request)
    assert example["input_ids"][: len(prompt)] == prompt
    assert example["labels"][: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    response = example["input_ids"][len(prompt) :]
    assert example["labels"][len(prompt) :] == response
    assert len(response) == k + 1 and response[-1] == tok.eos_token_id

    parsed = decode_page(tok, request, response)
    assert parsed.valid and parsed.reason == ""
    assert parsed.item_ids == page
    # Trailing padding (as batched generation leaves it) does not change the page.
    assert decode_page(tok, request, response + [tok.pad_token_id] * 3).item_ids == page

    # The prompt holds each index token once, in candidate order, and no other
    # control token: text that looks like "<c3>" or "<eos>" stays text.
    slots = candidate_token_ids(tok, CFG.max_candidates)
    assert [t for t in prompt if t in slots] == slots[:n]
    assert prompt[0] == tok.bos_token_id
    assert tok.eos_token_id not in prompt and tok.pad_token_id not in prompt
    assert tok.unk_token_id not in prompt  # the vocabulary was fitted on this request


def test_prompt_layout(tokenizer):
    request = make_request(n=3, k=2)
    words = tokenizer.convert_ids_to_tokens(encode_prompt(tokenizer, request))
    assert words[:13] == ["<bos>", "user", ":", "shoes", "toys", "shoes", "|", "query", ":", "red", "shoes", "|", "<c0>"]
    assert words[13:18] == ["canvas", "sneaker", "0", "shoes", "price_0"]
    assert words[-3:] == ["|", "page", ":"]
    no_query = tokenizer.convert_ids_to_tokens(encode_prompt(tokenizer, replace(request, query=None)))
    assert "query" not in no_query


def test_price_buckets_follow_the_edges(tokenizer):
    request = make_request(n=4, k=1)
    for price, bucket in [(0.5, 0), (9.99, 0), (10.0, 1), (49.0, 2), (150.0, 4), (1e6, 5)]:
        request.candidates[0].price = price
        words = tokenizer.convert_ids_to_tokens(encode_prompt(tokenizer, request))
        first = words[words.index("<c0>") : words.index("<c1>")]
        assert first[-1] == f"price_{bucket}"


def test_history_is_cut_to_the_most_recent_items():
    cfg = ModelConfig(max_history_items=2)
    request = make_request()
    request.user.history_categories = ["books", "toys", "shoes"]
    tok = build_tokenizer(cfg, [request])
    words = tok.convert_ids_to_tokens(encode_prompt(tok, request))
    assert words[1:6] == ["user", ":", "toys", "shoes", "|"]


def test_prompt_attrs_are_shown_when_configured():
    request = make_request(n=2, k=1)
    request.candidates[0].attrs = {"brand": "acme", "rating": 4}
    plain = build_tokenizer(ModelConfig(), [request])
    assert "acme" not in plain.convert_ids_to_tokens(encode_prompt(plain, request))
    tok = build_tokenizer(ModelConfig(prompt_attrs=["brand"]), [request])
    words = tok.convert_ids_to_tokens(encode_prompt(tok, request))
    assert words[words.index("<c0>") : words.index("<c1>")][-3:] == ["price_0", "brand", "acme"]
    assert "rating" not in words


def test_too_many_candidates_is_a_clear_error():
    tok = build_tokenizer(ModelConfig(max_candidates=4), [make_request(n=4, k=2)])
    with pytest.raises(SerializationError, match=r"model\.max_candidates is 4"):
        encode_prompt(tok, make_request(n=5, k=2, request_id="big"))


def test_too_long_prompt_is_a_clear_error():
    tok = build_tokenizer(ModelConfig(max_prompt_tokens=20), [make_request()])
    with pytest.raises(SerializationError, match=r"'r1'.*model\.max_prompt_tokens \(20\)"):
        encode_prompt(tok, make_request())


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: replace(r, page_size=0), "page_size must be between 1"),
        (lambda r: replace(r, page_size=7), "page_size must be between 1"),
        (lambda r: replace(r, candidates=[]), "no candidates"),
        (lambda r: replace(r, candidates=r.candidates[:2] + r.candidates[:1]), "'i0' appears more than once"),
    ],
)
def test_bad_requests_are_refused(tokenizer, change, message):
    with pytest.raises(SerializationError, match=message):
        encode_prompt(tokenizer, change(make_request()))


@pytest.mark.parametrize(
    "page, message",
    [
        (["i0", "i1"], "2 items, expected page_size 3"),
        (["i0", "i1", "i1"], "repeats an item"),
        (["i0", "i1", "x9"], r"\['x9'\] are not among its candidates"),
    ],
)
def test_bad_pages_are_refused(tokenizer, page, message):
    with pytest.raises(SerializationError, match=message):
        encode_example(tokenizer, make_request(), page)


def test_decode_flags_each_kind_of_invalid_page(tokenizer):
    request = make_request(n=6, k=3)
    c = candidate_token_ids(tokenizer, 12)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    word = tokenizer.convert_tokens_to_ids("sneaker")
    cases = {
        UNKNOWN_TOKEN: [c[0], word, c[1], eos],
        OUT_OF_RANGE: [c[0], c[6], c[1], eos],
        DUPLICATE: [c[0], c[2], c[0], eos],
        WRONG_LENGTH: [c[0], c[1], eos],
        NO_EOS: [c[0], c[1], c[2]],
        AFTER_EOS: [c[0], c[1], c[2], eos, pad, c[3]],
    }
    for reason, response in cases.items():
        parsed = decode_page(tokenizer, request, response)
        assert not parsed.valid and parsed.reason == reason, (reason, parsed)
        assert parsed.detail
    too_long = decode_page(tokenizer, request, [c[0], c[1], c[2], c[3], eos])
    assert (too_long.reason, too_long.item_ids) == (WRONG_LENGTH, ["i0", "i1", "i2"])
    # Items parsed before the problem are kept for inspection.
    assert decode_page(tokenizer, request, cases[DUPLICATE]).item_ids == ["i0", "i2"]
    assert decode_page(tokenizer, request, [len(tokenizer) + 5]).reason == UNKNOWN_TOKEN
    import torch

    ok = decode_page(tokenizer, request, torch.tensor([c[5], c[0], c[3], eos]))
    assert ok.valid and ok.item_ids == ["i5", "i0", "i3"]
