"""Reward models in the Hugging Face ecosystem: saved models that the plain transformers Auto
classes load with their trained head and score identically; the model card's own snippet;
first-layout directories converted on load; TRL-trained and Qwen2.5-Math-PRM-style PRMs."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, AutoTokenizer)

from rewardlab.reward_models.data import QWEN_PRM_SYSTEM
from rewardlab.reward_models.models import (RMSpec, build_reward_model, convert_reward_model,
                                            detect_spec, load_reward_model,
                                            saved_reward_model_dir)

Q1 = "sam has 3 apples . buys 4 more . loses 2 . how many apples ?"
Q2 = "eva has 5 coins . gets 3 times as many . how many coins ?"
QUESTIONS = [Q1, Q2, Q1]
STEPS = [["3 + 4 = 7", "7 - 2 = 5", "#### 5"],
         ["5 * 3 = 15", "#### 15"],
         ["3 + 4 = 8", "8 - 2 = 6", "6 + 1 = 7", "#### 7"]]

SPECS = [dict(kind="prm", form="head", tag=" ки"),
         dict(kind="prm", form="head", tag="<|prm_label|>", aggregation="min"),
         dict(kind="prm", form="lm", tag=" ки"),
         dict(kind="prm", form="lm", tag="<|prm_label|>", aggregation="last"),
         dict(kind="orm"),
         dict(kind="bt")]


def _trained_like(tiny_policy, seed=1, **spec):
    """A reward model whose head is far from its init (so that a random head would differ)."""
    rm = build_reward_model(tiny_policy, RMSpec(**spec), device="cpu", seed=0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (rm.head.parameters() if rm.head is not None else []):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return rm


def _auto_scores(path, spec: dict):
    """Scores computed with transformers alone, following the layout in the model card."""
    tok = AutoTokenizer.from_pretrained(path)
    cfg = json.loads((path / "config.json").read_text())["rewardlab_rm"]
    out = []
    if spec["kind"] != "prm":
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        for q, steps in zip(QUESTIONS, STEPS):
            ids = tok(q + "\n" + "\n".join(steps), add_special_tokens=False,
                      return_tensors="pt").input_ids
            with torch.no_grad():
                logit = model(ids).logits[0, 0].item() + cfg.get("offset", 0.0)
            out.append(([], 1 / (1 + math.exp(-logit)) if spec["kind"] == "orm" else logit))
        return out
    tag = cfg["tag"]
    tag_id = tok.encode(tag, add_special_tokens=False)[0]
    if spec["form"] == "head":
        model = AutoModelForTokenClassification.from_pretrained(path).eval()
    else:
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        good, bad = (tok.encode(t, add_special_tokens=False)[0] for t in cfg["labels"])
    for q, steps in zip(QUESTIONS, STEPS):
        text = q + "\n" + "\n".join(s + tag for s in steps)
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(ids).logits[0]
        z = logits if spec["form"] == "head" else logits[:, [bad, good]]
        p = z.softmax(-1)[:, 1][ids[0] == tag_id].tolist()
        agg = {"product": math.prod, "min": min, "last": lambda v: v[-1]}
        out.append((p, agg[cfg["aggregation"]](p)))
    return out


def _close(ours, theirs, tol=1e-5):
    for r, (steps, score) in zip(ours, theirs):
        assert len(r.step_scores) == len(steps)
        assert all(abs(a - b) < tol for a, b in zip(r.step_scores, steps)), (r.step_scores, steps)
        assert abs(r.score - score) < tol, (r.score, score)


# ------------------------------------------------------------------ the Auto-class test

@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_plain_auto_classes_score_like_load_reward_model(tiny_policy, tmp_path, spec):
    rm = _trained_like(tiny_policy, **spec)
    before = rm.score(QUESTIONS, STEPS)
    path = rm.save_pretrained(tmp_path / "rm")
    cfg = json.loads((path / "config.json").read_text())
    arch = cfg["architectures"][0]
    assert cfg["rewardlab_rm"]["tag"] == spec.get("tag", " ки")
    if spec["kind"] == "prm" and spec["form"] == "head":
        assert arch.endswith("ForTokenClassification") and len(cfg["id2label"]) == 2
        assert cfg["id2label"] == {"0": "bad", "1": "good"}
    elif spec["kind"] == "prm":
        assert arch.endswith("ForCausalLM") and cfg["rewardlab_rm"]["labels"] == ["+", "-"]
    else:
        assert arch.endswith("ForSequenceClassification") and len(cfg["id2label"]) == 1
    again = load_reward_model(path, device="cpu")
    ours = again.score(QUESTIONS, STEPS)
    _close(before, [(r.step_scores, r.score) for r in ours], tol=1e-6)
    _close(ours, _auto_scores(path, spec))


@pytest.mark.parametrize("spec", [SPECS[0], SPECS[2], SPECS[4], SPECS[5],
                                  dict(kind="prm", form="head", tag="\n", layout="trl")],
                         ids=["prm-head", "prm-lm", "orm", "bt", "prm-trl"])
def test_model_card_snippet_runs_and_matches(tiny_policy, tmp_path, monkeypatch, spec):
    rm = _trained_like(tiny_policy, **spec)
    path = rm.save_pretrained(tmp_path / "rm")
    card = (path / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "## Training data" in card and "## Metrics" in card and "## How it was made" in card
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(path)   # the snippet loads "." (this directory)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)   # noqa: S102 - our own generated snippet
    [r] = rm.score([ns["question"]], [ns["steps"]])
    assert abs(ns["score"] - r.score) < 1e-5
    if spec["kind"] == "prm":
        assert ns["step_scores"] == pytest.approx(r.step_scores, abs=1e-5)


# ------------------------------------------------------------------ the first layout

def _legacy_dir(tiny_policy, tmp_path, spec: dict):
    """What rewardlab saved before: a causal LM, rm_head.safetensors and rewardlab_rm.json v1."""
    model = AutoModelForCausalLM.from_pretrained(tiny_policy)
    tok = AutoTokenizer.from_pretrained(tiny_policy)
    d = tmp_path / "old"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    h = model.config.hidden_size
    g = torch.Generator().manual_seed(3)
    n = 2 if spec["kind"] == "prm" else 1
    head = {"weight": torch.randn(n, h, generator=g) * 0.5, "bias": torch.randn(n, generator=g)}
    save_file(head, str(d / "rm_head.safetensors"))
    (d / "rewardlab_rm.json").write_text(json.dumps(
        {"kind": spec["kind"], "form": spec.get("form", "lm"), "tag": spec.get("tag", " ки"),
         "labels": ["+", "-"], "aggregation": "product", "format_version": 1}))
    return d, model, tok, head


@pytest.mark.parametrize("spec", [dict(kind="prm", form="head", tag=" ки"), dict(kind="orm"),
                                  dict(kind="bt")], ids=["prm-head", "orm", "bt"])
def test_first_layout_loads_converted_and_converts(tiny_policy, tmp_path, spec):
    d, model, tok, head = _legacy_dir(tiny_policy, tmp_path, spec)
    rm = load_reward_model(d, device="cpu")
    ours = rm.score(QUESTIONS, STEPS)
    for q, steps, r in zip(QUESTIONS, STEPS, ours):   # the first layout's math, by hand
        enc = rm.encode(q, steps)
        with torch.no_grad():
            hs = model.model(torch.tensor([enc.input_ids])).last_hidden_state[0]
            z = hs @ head["weight"].T + head["bias"]
        if spec["kind"] == "prm":
            p = z.softmax(-1)[enc.tag_positions, 1].tolist()
            assert r.step_scores == pytest.approx(p, abs=1e-5)
            assert r.score == pytest.approx(math.prod(p), abs=1e-6)
        else:
            want = z[-1, 0].item()
            assert r.score == pytest.approx(1 / (1 + math.exp(-want)) if spec["kind"] == "orm"
                                            else want, abs=1e-5)
    new = convert_reward_model(d, tmp_path / "new")
    assert not (new / "rm_head.safetensors").exists()
    _close(ours, _auto_scores(new, {"form": "head", **spec}))
    _close(ours, [(r.step_scores, r.score) for r in load_reward_model(new, "cpu").score(
        QUESTIONS, STEPS)], tol=1e-6)


def test_lm_head_first_layout_loads(tiny_policy, tmp_path):
    d, *_ = _legacy_dir(tiny_policy, tmp_path, dict(kind="prm", form="lm"))
    (d / "rm_head.safetensors").unlink()   # the LM-head form had no head file
    rm = load_reward_model(d, device="cpu")
    assert rm.spec.form == "lm" and rm.spec.layout == "rewardlab"
    ref = load_reward_model(tiny_policy, device="cpu", spec=RMSpec(kind="prm", tag=" ки"))
    _close(rm.score(QUESTIONS, STEPS), [(r.step_scores, r.score)
                                        for r in ref.score(QUESTIONS, STEPS)], tol=1e-7)


# ------------------------------------------------------------------ public PRMs

def _tiny_token_classifier(tiny_policy, d, tok, n_labels=2, seed=5):
    model = AutoModelForTokenClassification.from_pretrained(tiny_policy, num_labels=n_labels)
    model.resize_token_embeddings(len(tok))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=g) * 0.5)
    return model


def test_trl_trained_token_classification_prm_loads(tiny_policy, tmp_path):
    """A PRM as TRL's PRMTrainer leaves it: AutoModelForTokenClassification, 2 labels, no
    rewardlab files; trained on BOS + prompt + (step + "\\n") per step, labels on the "\\n"."""
    tok = AutoTokenizer.from_pretrained(tiny_policy)
    d = tmp_path / "trl_prm"
    model = _tiny_token_classifier(tiny_policy, d, tok).eval()
    model.save_pretrained(d)
    tok.save_pretrained(d)
    assert saved_reward_model_dir(d) == d
    assert detect_spec(d) == RMSpec(kind="prm", form="head", tag="\n", layout="trl")
    rm = load_reward_model(d, device="cpu")
    sep = tok("\n", add_special_tokens=False).input_ids
    for q, steps, r in zip(QUESTIONS, STEPS, rm.score(QUESTIONS, STEPS)):
        ids, reads = [tok.bos_token_id] + tok(q, add_special_tokens=False).input_ids, []
        for s in steps:   # TRL's PRMTrainer.tokenize_row, rebuilt here
            ids += tok(s, add_special_tokens=False).input_ids + sep
            reads.append(len(ids) - 1)
        with torch.no_grad():
            p = model(torch.tensor([ids])).logits[0].softmax(-1)[reads, 1].tolist()
        assert r.step_scores == pytest.approx(p, abs=1e-5)
    # and a TRL-layout PRM re-saved by rewardlab keeps its layout
    again = load_reward_model(rm.save_pretrained(tmp_path / "resaved"), device="cpu")
    assert again.spec.layout == "trl"
    _close(again.score(QUESTIONS, STEPS), [(r.step_scores, r.score)
                                           for r in rm.score(QUESTIONS, STEPS)], tol=1e-6)


CHAT_TEMPLATE = ("{% for m in messages %}<s> {{ m['role'] }}\n{{ m['content'] }}</s>\n"
                 "{% endfor %}")


def _qwen_like_tokenizer(tiny_policy):
    tok = AutoTokenizer.from_pretrained(tiny_policy)
    tok.add_special_tokens({"extra_special_tokens": ["<extra_0>"]},
                           replace_extra_special_tokens=False)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_qwen_math_prm_layout_loads(tiny_policy, tmp_path):
    """A Qwen2.5-Math-PRM look-alike: Qwen2 backbone, ``Qwen2ForProcessRewardModel``
    architecture, head score = Linear(H, H), ReLU, Linear(H, 2), tag <extra_0>, chat layout."""
    from transformers import Qwen2Config, Qwen2ForTokenClassification

    tok = _qwen_like_tokenizer(tiny_policy)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, num_labels=2, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = Qwen2ForTokenClassification(cfg)
    model.score = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(),
                                      torch.nn.Linear(32, 2))
    model.eval()
    d = tmp_path / "qwen_prm"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    raw = json.loads((d / "config.json").read_text())
    raw["architectures"] = ["Qwen2ForProcessRewardModel"]
    (d / "config.json").write_text(json.dumps(raw))

    rm = load_reward_model(d, device="cpu")
    assert rm.spec == RMSpec(kind="prm", form="head", tag="<extra_0>", layout="qwen")
    tok = AutoTokenizer.from_pretrained(d)   # as transformers loads it (a qwen2 config)
    tag_id = tok.convert_tokens_to_ids("<extra_0>")
    for q, steps, r in zip(QUESTIONS, STEPS, rm.score(QUESTIONS, STEPS)):
        msgs = [{"role": "system", "content": QWEN_PRM_SYSTEM}, {"role": "user", "content": q},
                {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]
        ids = tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False,
                  return_tensors="pt").input_ids
        with torch.no_grad():
            p = model(ids).logits[0].softmax(-1)[ids[0] == tag_id, 1].tolist()
        assert len(p) == len(steps)
        assert r.step_scores == pytest.approx(p, abs=1e-5)
    # re-saved by rewardlab, it keeps its layout and its 2-layer head
    again = load_reward_model(rm.save_pretrained(tmp_path / "resaved"), device="cpu")
    assert again.spec == rm.spec
    _close(again.score(QUESTIONS, STEPS), [(r.step_scores, r.score)
                                           for r in rm.score(QUESTIONS, STEPS)], tol=1e-6)


def test_qwen_style_two_label_token_classifier_with_a_spec(tiny_policy, tmp_path):
    """The same, as a plain 2-label token classifier read at <extra_0> in rewardlab's layout."""
    tok = _qwen_like_tokenizer(tiny_policy)
    d = tmp_path / "tc"
    model = _tiny_token_classifier(tiny_policy, d, tok).eval()
    model.save_pretrained(d)
    tok.save_pretrained(d)
    spec = RMSpec(kind="prm", form="head", tag="<extra_0>")
    rm = load_reward_model(d, device="cpu", spec=spec)
    tag_id = tok.convert_tokens_to_ids("<extra_0>")
    for q, steps, r in zip(QUESTIONS, STEPS, rm.score(QUESTIONS, STEPS)):
        text = q + "\n" + "\n".join(s + "<extra_0>" for s in steps)
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            p = model(ids).logits[0].softmax(-1)[ids[0] == tag_id, 1].tolist()
        assert r.step_scores == pytest.approx(p, abs=1e-5)


def test_a_hub_id_loads_through_its_snapshot(tiny_policy, tmp_path, monkeypatch):
    """``load_reward_model("owner/name")`` fetches config, weights and tokenizer and then reads
    them like a directory (here the hub is a local folder)."""
    import huggingface_hub

    rm = _trained_like(tiny_policy, kind="orm")
    snap = rm.save_pretrained(tmp_path / "snapshot")
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, allow_patterns: asked.append((repo, allow_patterns)) or snap)
    again = load_reward_model("someone/tiny-orm", device="cpu")
    assert asked and asked[0][0] == "someone/tiny-orm" and "*.safetensors" in asked[0][1]
    _close(again.score(QUESTIONS, STEPS), [(r.step_scores, r.score)
                                           for r in rm.score(QUESTIONS, STEPS)], tol=1e-6)


def test_train_rm_in_trl_layout_gives_a_model_trl_users_read(tiny_policy, tmp_path):
    """layout=trl: rewardlab trains a PRM that reads like a TRL PRMTrainer model (BOS, labels on
    the "\\n" after each step) with AutoModelForTokenClassification alone."""
    from rewardlab.reward_models.train import RMTrainConfig, train_reward_model

    rows = [{"question": q, "steps": s, "step_labels": [1] * (len(s) - 1) + [i % 2]}
            for i, (q, s) in enumerate(zip(QUESTIONS * 4, STEPS * 4))]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train_reward_model(RMTrainConfig(kind="prm", form="head", layout="trl", tag="\n",
                                     model=str(tiny_policy), data=[str(data)], out=str(tmp_path / "r"),
                                     steps=2, batch_size=4, progress=False, device="cpu",
                                     eval_split=0.0, tensorboard=False))
    final = tmp_path / "r" / "final"
    rm = load_reward_model(final, device="cpu")
    assert rm.spec.layout == "trl" and "TRL PRMTrainer" in (final / "README.md").read_text()
    tok = AutoTokenizer.from_pretrained(final)
    model = AutoModelForTokenClassification.from_pretrained(final).eval()
    sep = tok("\n", add_special_tokens=False).input_ids
    for q, steps, r in zip(QUESTIONS, STEPS, rm.score(QUESTIONS, STEPS)):
        ids, reads = [tok.bos_token_id] + tok(q, add_special_tokens=False).input_ids, []
        for s in steps:
            ids += tok(s, add_special_tokens=False).input_ids + sep
            reads.append(len(ids) - 1)
        with torch.no_grad():
            p = model(torch.tensor([ids])).logits[0].softmax(-1)[reads, 1].tolist()
        assert r.step_scores == pytest.approx(p, abs=1e-5)


# ------------------------------------------------------------------ the hub

class _FakeHub:
    """Records what would go over the network."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", kw["repo_id"], kw))


def test_push_to_hub_creates_the_repo_and_uploads_the_folder(tiny_policy, tmp_path):
    from rewardlab.training.hub import push_to_hub

    path = _trained_like(tiny_policy, kind="orm").save_pretrained(tmp_path / "final")
    hub = _FakeHub()
    url = push_to_hub(path, "me/tiny-orm", private=True, api=hub)
    assert url == "https://huggingface.co/me/tiny-orm"
    (c1, repo1, kw1), (c2, repo2, kw2) = hub.calls
    assert (c1, repo1, kw1["private"], kw1["exist_ok"]) == ("create_repo", "me/tiny-orm", True, True)
    assert (c2, repo2, kw2["folder_path"]) == ("upload_folder", "me/tiny-orm", str(path))
    assert "trainer_state.pt" in kw2["ignore_patterns"]
    with pytest.raises(FileNotFoundError, match="no saved model"):
        push_to_hub(tmp_path, "me/x", api=hub)
    with pytest.raises(ValueError, match="not a hub repo id"):
        push_to_hub(path, "a/b/c", api=hub)


def test_train_rm_push_to_hub_uploads_the_final_model(tiny_policy, tmp_path, monkeypatch):
    import huggingface_hub

    from rewardlab.reward_models.train import RMTrainConfig, train_reward_model

    hub = _FakeHub()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: hub)
    monkeypatch.setenv("HF_TOKEN", "hf_test")   # a push without a token is refused before work
    rows = [{"question": q, "steps": s, "outcome": i % 2}
            for i, (q, s) in enumerate(zip(QUESTIONS * 2, STEPS * 2))]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train_reward_model(RMTrainConfig(kind="orm", model=str(tiny_policy), data=[str(data)],
                                     out=str(tmp_path / "r"), steps=1, batch_size=4,
                                     progress=False, device="cpu", eval_split=0.0,
                                     tensorboard=False, push_to_hub="me/tiny-orm"))
    [(_, _, _), (_, repo, kw)] = hub.calls
    assert repo == "me/tiny-orm" and kw["folder_path"] == str(tmp_path / "r" / "final")
