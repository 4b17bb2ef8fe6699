"""Models whose generation config lists several end-of-response tokens (chat models: a turn-end
token besides the tokenizer's EOS): sampling, response masks and texts stop at any of them."""

import pytest
import torch

from rewardlab.models.fast import fast_generate
from rewardlab.models.loading import load_model_and_tokenizer, stop_token_ids
from rewardlab.models.sampling import SamplingConfig, generate_rollouts, response_mask_from_ids

from test_fast_decode import PROMPTS, _hf_greedy, _scramble


class _Tok:
    def __init__(self, eos):
        self.eos_token_id = eos


class _Model:
    def __init__(self, eos):
        from transformers import GenerationConfig
        self.generation_config = GenerationConfig(eos_token_id=eos)


def test_stop_token_ids_tokenizer_first_then_generation_config_without_repeats():
    assert stop_token_ids(_Model([7, 2, 9]), _Tok(2)) == [2, 7, 9]
    assert stop_token_ids(_Model(5), _Tok(2)) == [2, 5]
    assert stop_token_ids(_Model(None), _Tok(2)) == [2]
    assert stop_token_ids(_Model([4]), _Tok(None)) == [4]
    assert stop_token_ids(object(), _Tok(None)) == []   # no generation config, no EOS


def test_response_mask_ends_at_the_first_of_several_stop_ids():
    ids = torch.tensor([[5, 7, 2, 9], [5, 2, 7, 9], [5, 6, 8, 9]])
    mask, finished = response_mask_from_ids(ids, [2, 7])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert finished.tolist() == [True, True, False]
    mask1, _ = response_mask_from_ids(ids, 2)          # one id: only that one ends a response
    assert mask1.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]


@pytest.fixture
def scrambled(tiny_policy):
    model, tok = load_model_and_tokenizer(tiny_policy, dtype="float32", device="cpu")
    return _scramble(model).eval(), tok


def _mid_way_token(ref: torch.Tensor, tok, mask: torch.Tensor | None = None) -> int:
    """An ordinary (not special) token that some greedy continuation in ``ref`` produces at
    steps 2..9 (within ``mask``)."""
    real = ref[:, 2:10] if mask is None else ref[:, 2:10][mask[:, 2:10].bool()]
    return next(int(t) for t in real.flatten().unique() if int(t) not in tok.all_special_ids)


def test_fast_generate_stops_at_any_listed_id_like_generate(scrambled):
    model, tok = scrambled
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    free = _hf_greedy(model, enc, 16, eos=model.config.vocab_size, pad=tok.pad_token_id)  # never drawn
    extra = _mid_way_token(free, tok)
    stops = [tok.eos_token_id, extra]
    ref = _hf_greedy(model, enc, 16, eos=stops, pad=tok.pad_token_id)
    got = fast_generate(model, enc["input_ids"], enc["attention_mask"], 16, stops, tok.pad_token_id,
                        temperature=0.0)
    assert torch.equal(got, ref)
    # a row that produced `extra` ends there: padding after it
    row = next(i for i in range(len(PROMPTS)) if extra in free[i].tolist())
    k = free[row].tolist().index(extra)
    assert got[row, k] == extra and (got[row, k + 1:] == tok.pad_token_id).all()
    # and min_new_tokens keeps every listed id out of the first tokens
    late = fast_generate(model, enc["input_ids"], enc["attention_mask"], 16, stops, tok.pad_token_id,
                         temperature=0.0, min_new_tokens=12)
    assert not torch.isin(late[:, :12], torch.tensor(stops)).any()


@pytest.mark.parametrize("engine", ["fast", "hf"])
def test_rollouts_end_at_a_generation_config_stop_token(scrambled, engine):
    model, tok = scrambled
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=16, engine=engine)
    plain = generate_rollouts(model, tok, PROMPTS, cfg)
    extra = _mid_way_token(plain.response_ids, tok, plain.response_mask)
    assert extra not in tok.all_special_ids   # an ordinary word token: must not reach the text
    model.generation_config.eos_token_id = [tok.eos_token_id, extra]
    batch = generate_rollouts(model, tok, PROMPTS, cfg)
    for i in range(len(PROMPTS)):
        before = plain.response_ids[i][plain.response_mask[i].bool()].tolist()
        if extra not in before:
            assert batch.response_ids[i][batch.response_mask[i].bool()].tolist() == before
            continue
        k = before.index(extra)
        assert batch.response_mask[i].sum() == k + 1 and bool(batch.finished[i])
        assert batch.response_ids[i, k] == extra            # the stop token is the last real token
        assert batch.texts[i] == tok.decode(before[:k], skip_special_tokens=True)
    assert batch.finished.sum() > plain.finished.sum()


def test_loading_keeps_the_models_stop_tokens(tiny_policy, tmp_path):
    model, tok = load_model_and_tokenizer(tiny_policy, dtype="float32", device="cpu")
    model.generation_config.eos_token_id = [17, tok.eos_token_id]
    model.save_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    again, tok2 = load_model_and_tokenizer(tmp_path, dtype="float32", device="cpu")
    assert again.generation_config.eos_token_id == [tok.eos_token_id, 17]
    assert stop_token_ids(again, tok2) == [tok.eos_token_id, 17]
