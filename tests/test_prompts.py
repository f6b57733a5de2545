"""Dual prompt learner and text encoder: parameter count, placement, and the truncated text path."""
import torch

from models.prompts import DualPromptLearner, TextEncoder

NAMES = ["cat", "sweet_pepper", "aquarium_fish", "computer_keyboard"]


def _learner(clip, tokenizer, position="end", n_ctx=16):
    return DualPromptLearner(NAMES, n_ctx, clip.token_embedding, tokenizer, torch.float32, position)


def _set_ctx_to_placeholder(learner, clip, tokenizer):
    """Make both contexts the embedding of the placeholder token, so prompts equal real text."""
    p_token = tokenizer(["P"])[0, 1]
    with torch.no_grad():
        learner.pos_ctx.copy_(clip.token_embedding.weight[p_token].expand_as(learner.pos_ctx))
        learner.neg_ctx.copy_(learner.pos_ctx)


def test_parameter_count_is_two_contexts(tiny_clip, tiny_tokenizer):
    learner = _learner(tiny_clip, tiny_tokenizer)
    width = tiny_clip.token_embedding.weight.shape[1]
    assert sum(p.numel() for p in learner.parameters()) == 2 * 16 * width
    # N(0, 0.02^2) init: the sample std of 16*32 values is close to 0.02
    assert abs(float(learner.pos_ctx.detach().std()) - 0.02) < 0.004
    assert not torch.equal(learner.pos_ctx, learner.neg_ctx)


def test_truncated_text_features_equal_full_context(tiny_clip, tiny_tokenizer):
    learner = _learner(tiny_clip, tiny_tokenizer)
    encoder = TextEncoder(tiny_clip)
    eot = learner.eot_positions()
    short = encoder(learner(truncate=True), eot)
    full = encoder(learner(truncate=False), eot)
    assert learner.seq_len < 77
    assert short.shape == (2 * len(NAMES), tiny_clip.text_projection.shape[1])
    assert torch.allclose(short, full, atol=1e-5, rtol=0)


def test_end_prompt_matches_open_clip_encode_text(tiny_clip, tiny_tokenizer):
    """Independent route: with contexts set to the 'P' embedding the prompt is the text 'P P ... name.'."""
    learner = _learner(tiny_clip, tiny_tokenizer)
    _set_ctx_to_placeholder(learner, tiny_clip, tiny_tokenizer)
    ours = TextEncoder(tiny_clip)(learner(), learner.eot_positions())[: len(NAMES)]
    texts = [" ".join(["P"] * 16) + " " + n.replace("_", " ") + "." for n in NAMES]
    reference = tiny_clip.encode_text(tiny_tokenizer(texts))
    assert torch.allclose(ours, reference, atol=1e-5, rtol=0)


def test_front_and_middle_positions(tiny_clip, tiny_tokenizer):
    for position, make_text in [
        ("front", lambda n: n + " " + " ".join(["P"] * 16) + "."),
        ("middle", lambda n: " ".join(["P"] * 8) + " " + n + " " + " ".join(["P"] * 8) + "."),
    ]:
        learner = _learner(tiny_clip, tiny_tokenizer, position)
        _set_ctx_to_placeholder(learner, tiny_clip, tiny_tokenizer)
        ours = TextEncoder(tiny_clip)(learner(), learner.eot_positions())[: len(NAMES)]
        reference = tiny_clip.encode_text(tiny_tokenizer([make_text(n.replace("_", " ")) for n in NAMES]))
        assert torch.allclose(ours, reference, atol=1e-5, rtol=0), position


def test_negative_prompts_use_their_own_context(tiny_clip, tiny_tokenizer):
    learner = _learner(tiny_clip, tiny_tokenizer)
    prompts = learner()
    c = len(NAMES)
    assert torch.equal(prompts[0, 1:17], learner.pos_ctx)
    assert torch.equal(prompts[c, 1:17], learner.neg_ctx)
    assert torch.equal(prompts[0, 17:], prompts[c, 17:])  # same class-name tokens and padding
