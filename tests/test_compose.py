"""Token-level reward composition, KL per token, and step ends → token indices."""

import random

import pytest
import torch

from rewardlab.rewards import steps as steps_mod
from rewardlab.rewards.compose import (GROUP_REFINERS, add_kl_to_rewards, build_token_rewards,
                                       kl_penalty, last_token_index, refine_batch)
from rewardlab.rewards.refine import NORM_EPS
from rewardlab.rewards.steps import (batch_step_end_positions, step_char_ends,
                                     step_end_positions, step_ends_from_char_spans)

# =============================================================================================
# build_token_rewards

MASK = torch.tensor([[1, 1, 1, 1, 0, 0],       # 4 real tokens, EOS at 3, then 2 padding
                     [1, 1, 1, 1, 1, 1]])      # truncated: no padding


def test_rewards_by_hand_success_on_eos_never_on_padding():
    rewards, info = build_token_rewards(
        step_rewards=[[0.5, 0.9], [0.2]], step_ends=[[1, 2], [4]], response_mask=MASK,
        success=torch.tensor([1.0, 0.0]), orm=torch.tensor([0.5, 0.3]), alpha=1.0, beta=0.5)
    expected = torch.tensor([[0.0, 0.5, 0.9, 1.0 + 0.25, 0.0, 0.0],
                             [0.0, 0.0, 0.0, 0.0, 0.2, 0.0 + 0.15]])
    assert torch.allclose(rewards, expected)
    assert (rewards[0, 4:] == 0).all()                                 # never on padding
    assert info["reward/prm_return"].tolist() == pytest.approx([1.4, 0.2])
    assert info["reward/prm_raw_mean"].tolist() == pytest.approx([0.7, 0.2])
    assert info["reward/n_steps"].tolist() == [2, 1]


def test_success_goes_to_last_real_token_with_left_zeros_and_right_padding():
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [1, 4, 0]
    rewards, _ = build_token_rewards([[], [], []], [[], [], []], mask,
                                     success=torch.tensor([1.0, 2.0, 3.0]))
    assert rewards.nonzero().tolist() == [[0, 1], [1, 4], [2, 0]]
    assert rewards[rewards != 0].tolist() == [1.0, 2.0, 3.0]


def test_step_end_past_last_real_token_is_clamped_onto_it():
    rewards, _ = build_token_rewards([[0.5, 0.25]], [[2, 9]], MASK[:1], alpha=2.0)
    assert rewards[0].tolist() == pytest.approx([0, 0, 1.0, 0.5, 0, 0])


def test_alpha_and_refinement_applied():
    r = [[0.9, 0.5, 0.6]]
    rewards, info = build_token_rewards(r, [[0, 1, 2]], MASK[:1], alpha=0.5, refine="clip_delta",
                                        exclude_last=True)
    # clip_delta(exclude_last): [0.3, −0.3, 0]; × α = 0.5
    assert rewards[0, :3].tolist() == pytest.approx([0.15, -0.15, 0.0])
    assert info["reward/prm_return"].item() == pytest.approx(0.0)


def test_normed_whole_batch_or_per_group():
    r = [[1.0, 2.0], [3.0], [10.0, 30.0]]
    ends = [[0, 1], [0], [0, 1]]
    mask = torch.ones(3, 3)
    # groups {0, 1} and {2}: {1, 2, 3} → mean 2, std 1; {10, 30} → mean 20, std √200
    rewards, _ = build_token_rewards(r, ends, mask, refine="normed", group_ids=[0, 0, 1])
    s1, s2 = 1.0 + NORM_EPS, 200 ** 0.5 + NORM_EPS
    assert rewards[0, :2].tolist() == pytest.approx([-1 / s1, 0.0])
    assert rewards[1, 0].item() == pytest.approx(1 / s1)
    assert rewards[2, :2].tolist() == pytest.approx([-10 / s2, 10 / s2])
    # no group_ids: the whole batch is one group
    flat = torch.tensor([1.0, 2, 3, 10, 30])
    z = ((flat - flat.mean()) / (flat.std() + NORM_EPS)).tolist()
    rewards, _ = build_token_rewards(r, ends, mask, refine="normed")
    assert [rewards[0, 0], rewards[0, 1], rewards[1, 0], rewards[2, 0], rewards[2, 1]] == \
        pytest.approx(z, abs=1e-6)
    # exclude_last belongs to the Delta family: PR-Normed uses every step
    assert refine_batch("normed", r, exclude_last=True) == refine_batch("normed", r)
    assert refine_batch("delta", r, exclude_last=True) == [pytest.approx([1.0, 0.0]), [0.0],
                                                           pytest.approx([10.0, 0.0])]


def test_key_property_via_token_rewards():
    """All steps score 1.0: the raw PRM return grows with K, the refined ones do not."""
    def prm_return(refine, K):
        mask = torch.ones(1, 12)
        rewards, _ = build_token_rewards([[1.0] * K], [list(range(K))], mask,
                                         success=torch.tensor([1.0]), refine=refine)
        return rewards.sum().item() - 1.0
    Ks = range(1, 10)
    raw = [prm_return("none", K) for K in Ks]
    assert raw == pytest.approx(list(map(float, Ks)))
    for name in ["clip", "delta", "clip_delta"]:
        rets = [prm_return(name, K) for K in Ks]
        assert all(b <= a + 1e-6 for a, b in zip(rets, rets[1:])), (name, rets)


def test_errors():
    with pytest.raises(ValueError, match="2 step rewards but 1 step ends"):
        build_token_rewards([[0.1, 0.2]], [[1]], MASK[:1])
    with pytest.raises(ValueError, match="no response tokens"):
        build_token_rewards([[]], [[]], torch.zeros(1, 4))
    with pytest.raises(ValueError, match="valid: none, clip, delta, clip_delta, min_form, normed"):
        build_token_rewards([[]], [[]], MASK[:1], refine="bogus")
    with pytest.raises(ValueError, match="success must have shape"):
        build_token_rewards([[]], [[]], MASK[:1], success=torch.ones(2))
    assert GROUP_REFINERS.names() == ["none", "clip", "delta", "clip_delta", "min_form", "normed"]


# =============================================================================================
# KL per token

def test_kl_estimators_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.2]]))
    ref = torch.log(torch.tensor([[0.25, 0.2]]))
    # k1 = log 0.5 − log 0.25 = log 2; k3 = 0.25/0.5 − log(0.25/0.5) − 1 = 0.5 + log 2 − 1
    assert kl_penalty(logp, ref, "k1")[0].tolist() == pytest.approx([0.6931472, 0.0])
    assert kl_penalty(logp, ref, "k3")[0].tolist() == pytest.approx([0.1931472, 0.0], abs=1e-6)
    assert kl_penalty(logp, ref, "k2")[0].tolist() == pytest.approx([0.5 * 0.6931472 ** 2, 0.0])
    with pytest.raises(ValueError, match="valid: k1, k2, k3"):
        kl_penalty(logp, ref, "k4")


def test_add_kl_to_rewards_only_on_response_tokens():
    rewards = torch.tensor([[0.0, 1.0, 0.0]])
    kl = torch.tensor([[0.5, 0.5, float("inf")]])
    mask = torch.tensor([[1, 1, 0]])
    out = add_kl_to_rewards(rewards, kl, 0.1, mask)
    assert out[0].tolist() == pytest.approx([-0.05, 0.95, 0.0])


# =============================================================================================
# Step ends → token indices

def test_step_char_ends():
    assert step_char_ends("3 + 4 = 7\n7 - 2 = 5\n#### 5") == [9, 19, 26]
    # blank and whitespace-only lines are not steps; trailing spaces are not part of a step
    assert step_char_ends("a  \n\n \nbc\n") == [1, 9]
    assert step_char_ends("para one\nstill one\n\npara two", "\n\n") == [18, 28]
    assert step_char_ends("") == [] and step_char_ends("\n\n") == []


@pytest.mark.parametrize("sep", ["\n", "\n\n"])
def test_step_texts_are_the_steps_step_char_ends_delimits(sep):
    from rewardlab.data.steps import step_texts
    text = "  a = 1 \n\n\nb = 2\n \n\n#### 3\n\n"
    steps, ends = step_texts(text, sep), step_char_ends(text, sep)
    assert len(steps) == len(ends) > 0
    assert all(text[e - len(s):e] == s for s, e in zip(steps, ends))
    assert step_texts(text, "\n") == ["a = 1", "b = 2", "#### 3"]
    assert step_texts(text, "\n\n") == ["a = 1", "b = 2", "#### 3"] and step_texts("", sep) == []


def test_char_span_core_by_hand():
    # tokens: "a" " =" " 1" ".\n" "b" " =" " 2" "\n\n" "####" " 3"
    toks = ["a", " =", " 1", ".\n", "b", " =", " 2", "\n\n", "####", " 3"]
    text = "".join(toks)
    ends = [len("".join(toks[:i + 1])) for i in range(len(toks))]
    assert step_ends_from_char_spans(ends, step_char_ends(text)) == [3, 6, 9]
    # one token holding the end of a step and the start of the next: ".\nb"
    toks = ["a", " = 1", ".\nb", " = 2", "\n", "#### 3"]
    ends = [len("".join(toks[:i + 1])) for i in range(len(toks))]
    assert step_ends_from_char_spans(ends, step_char_ends("".join(toks))) == [2, 3, 5]
    # zero-length tokens (special tokens, partial characters) never end a step
    assert step_ends_from_char_spans([0, 2, 2, 3, 3], [2, 3]) == [1, 3]
    with pytest.raises(ValueError, match="past the tokens"):
        step_ends_from_char_spans([1, 2], [3])
    with pytest.raises(ValueError, match="non-decreasing"):
        step_ends_from_char_spans([2, 1], [1])


def test_testbed_tokenizer():
    from rewardlab.data.testbed import build_tokenizer
    tok = build_tokenizer()
    text = "3 + 4 = 7\n7 - 2 = 5\n#### 5"
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id, tok.pad_token_id]
    toks = tok.convert_ids_to_tokens(ids)
    ends = step_end_positions(ids, tok)
    assert [toks[i] for i in ends] == [" 7", " 5", " 5"]               # the last digit token
    assert [toks[i + 1] for i in ends[:2]] == ["\n", "\n"]
    assert ends[-1] == len(ids) - 3                                    # before EOS and padding
    assert step_end_positions(ids, tok, n_tokens=len(ids) - 2) == ends


# --- a byte-level BPE trained in the test, with merges across "\n" and split UTF-8 characters ---

def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@pytest.fixture(scope="module")
def bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    rng = random.Random(0)

    def line():
        return f"{rng.choice(['a', 'b', 'x', 'é', 'ки'])} = {rng.randint(0, 99)}."
    corpus = ["\n".join(line() for _ in range(rng.randint(1, 4))) + rng.choice(["\n", "\n\n"])
              + f"#### {rng.randint(0, 99)}" for _ in range(300)]
    tok = Tokenizer(models.BPE())
    # no regex split: merges may cross "\n", so tokens like ".\n", "\n\n", ".\nb = " appear
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + 2 + 40, min_frequency=2,
                                  special_tokens=["<eos>", "<pad>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def _oracle(ids, tokenizer, text, separator="\n"):
    """Last token whose bytes overlap each step, from the byte-level alphabet (no decoding)."""
    inv = {c: b for b, c in _bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids)
    char_of_byte = [ci for ci, ch in enumerate(text) for _ in ch.encode()]
    spans, pos = [], 0                                   # token i covers chars spans[i]
    for t, piece in zip(ids, tokenizer.convert_ids_to_tokens(ids)):
        n = 0 if t in special else len(bytes(inv[c] for c in piece))
        spans.append({char_of_byte[j] for j in range(pos, pos + n)})
        pos += n
    out, start = [], 0
    for piece in text.split(separator):
        if piece.strip():
            a = start + len(piece) - len(piece.lstrip())
            b = start + len(piece.rstrip())
            out.append(max(i for i, s in enumerate(spans) if any(a <= c < b for c in s)))
        start += len(piece) + len(separator)
    return out


TEXTS = ["a = 1.\nb = 2.\n\n#### 3", "é = 7.\nx = 12.\n#### 7", "zé😀\n7", "ки = 5.\n\n\nки\n#### 5",
         "  a = 1.  \n \nb = 22.\n#### 9"]


def test_bpe_has_merged_separator_tokens(bpe):
    vocab = bpe.get_vocab()
    assert any("Ċ" in t and len(t) > 1 for t in vocab)                  # a merged "\n" token
    ids = bpe("a = 1.\nb = 2.\n\n#### 3", add_special_tokens=False)["input_ids"]
    assert any("Ċ" in t and t != "Ċ" for t in bpe.convert_ids_to_tokens(ids))


@pytest.mark.parametrize("text", TEXTS)
def test_bpe_canonical_ids_match_byte_oracle(bpe, text):
    ids = bpe(text, add_special_tokens=False)["input_ids"]
    full = ids + [bpe.eos_token_id] + [bpe.pad_token_id] * 3
    expected = _oracle(ids, bpe, text)
    assert step_end_positions(full, bpe) == expected
    assert step_end_positions(full, bpe, n_tokens=len(ids) + 1) == expected
    assert step_end_positions(torch.tensor(full), bpe) == expected


@pytest.mark.parametrize("text", TEXTS)
def test_bpe_non_canonical_ids_match_byte_oracle_via_search(bpe, text, monkeypatch):
    # encode piece by piece at random cut points (inside multi-byte characters too): ids that
    # re-encoding the text does not give back
    rng = random.Random(len(text))
    data = text.encode()
    cuts = sorted(rng.sample(range(1, len(data)), k=min(4, len(data) - 1)))
    inv = {c: b for b, c in _bytes_to_unicode().items()}
    ids = []
    for a, b in zip([0] + cuts, cuts + [len(data)]):
        chunk = "".join(_bytes_to_unicode()[x] for x in data[a:b])
        ids += [bpe.convert_tokens_to_ids(c) for c in chunk]          # single-byte tokens
    assert bytes(inv[c] for c in "".join(bpe.convert_ids_to_tokens(ids))) == data
    guesses = []
    orig = steps_mod._offset_guesses
    monkeypatch.setattr(steps_mod, "_offset_guesses", lambda *a: guesses.append(orig(*a)) or
                        guesses[-1])
    assert step_end_positions(ids + [bpe.eos_token_id], bpe) == _oracle(ids, bpe, text)
    if ids != bpe(text, add_special_tokens=False)["input_ids"]:
        assert guesses == [None], "non-canonical ids cannot use the offsets"


def _count_decodes(monkeypatch):
    calls = []
    orig = steps_mod._batch_decoder

    def counting(tokenizer):
        decode = orig(tokenizer)
        return lambda seqs: calls.append(len(seqs)) or decode(seqs)
    monkeypatch.setattr(steps_mod, "_batch_decoder", counting)
    return calls


def test_offset_guesses_confirmed_without_search(bpe, monkeypatch):
    calls = _count_decodes(monkeypatch)
    text = "a = 1.\nb = 2.\n\n#### 3"
    ids = bpe(text, add_special_tokens=False)["input_ids"]
    assert step_end_positions(ids, bpe) == _oracle(ids, bpe, text)
    assert calls == [1, 2 * 3]                # the text, then reach(t) and reach(t − 1) per step


@pytest.mark.parametrize("text", TEXTS)
def test_binary_search_alone_and_wrong_guesses_are_corrected(bpe, text, monkeypatch):
    ids = bpe(text, add_special_tokens=False)["input_ids"]
    expected = _oracle(ids, bpe, text)
    monkeypatch.setattr(steps_mod, "_offset_guesses", lambda *a: None)
    assert step_end_positions(ids, bpe) == expected
    for shift in (-2, -1, 1, 3):
        wrong = [min(max(t + shift, 0), len(ids) - 1) for t in expected]
        monkeypatch.setattr(steps_mod, "_offset_guesses", lambda *a, w=wrong: list(w))
        assert step_end_positions(ids, bpe) == expected


def test_tokenizer_without_fast_backend(bpe):
    class Plain:                                       # only decode() and all_special_ids
        all_special_ids = bpe.all_special_ids

        def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=False):
            return bpe.decode(ids, skip_special_tokens=skip_special_tokens)
    text = TEXTS[1]
    ids = bpe(text, add_special_tokens=False)["input_ids"]
    assert step_end_positions(ids, Plain()) == _oracle(ids, bpe, text)


def test_batch_step_end_positions_right_padding(bpe):
    rows = [bpe(t, add_special_tokens=False)["input_ids"] + [bpe.eos_token_id] for t in TEXTS[:2]]
    T = max(map(len, rows)) + 2
    ids = torch.tensor([r + [bpe.pad_token_id] * (T - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
    assert batch_step_end_positions(ids, mask, bpe) == [_oracle(r[:-1], bpe, t)
                                                       for r, t in zip(rows, TEXTS[:2])]


def test_no_steps():
    from rewardlab.data.testbed import build_tokenizer
    tok = build_tokenizer()
    assert step_end_positions([tok.eos_token_id], tok) == []
    assert step_end_positions([], tok) == []


def test_min_form_through_refine_batch_and_token_rewards():
    import math
    from rewardlab.rewards.compose import refine_batch
    from rewardlab.rewards.refine import min_form
    assert "min_form" in GROUP_REFINERS
    rows = [[1.0, 0.0], [0.5]]
    assert refine_batch("min_form", rows, temperature=1.0) == [
        pytest.approx(min_form([1.0, 0.0], 1.0)), pytest.approx([0.5])]
    # response 0: steps end at tokens 1 and 3, success 1 on its last token (3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]).float()
    r, info = build_token_rewards([[1.0, 0.0], [0.5]], [[1, 3], [1]], mask,
                                  success=torch.tensor([1.0, 0.0]), refine="min_form",
                                  refine_options={"temperature": 1.0})
    w = math.exp(-1) / (1 + math.exp(-1))
    assert r.tolist()[0] == pytest.approx([0.0, w, 0.0, 1.0]) and r.tolist()[1] == pytest.approx([0.0, 0.5, 0, 0])
    assert info["reward/prm_return"].tolist() == pytest.approx([w, 0.5])
