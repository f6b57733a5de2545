"""DeFT model: logits against a hand route, gradient routing of L_dp and L_sim, phase-2 classifier."""
import logging

import open_clip
import torch
import torch.nn.functional as F

from models.classifier import CLIPClassifier
from models.clip_loader import load_clip
from models.zero_shot import TEMPLATE_SETS, zero_shot_classifier
from models.deft import DeFTModel
from models.peft import TuningConfig
from lnl.losses import deft_phase1_loss

NAMES = ["cat", "dog", "sweet_pepper"]


def _model(clip, tokenizer):
    torch.manual_seed(1)
    return DeFTModel(clip, NAMES, tokenizer, TuningConfig(vpt_deep=True, vpt_len=2), n_ctx=4)


def test_logits_are_scaled_cosines_of_image_and_prompt_features(tiny_clip, tiny_tokenizer):
    model = _model(tiny_clip, tiny_tokenizer)
    images = torch.randn(2, 3, 32, 32)
    pos, neg = model(images)
    z = F.normalize(model.image_encoder.project(model.image_encoder(images)), dim=-1)
    prompts = model.prompt_learner(truncate=False)
    text = F.normalize(model.text_encoder(prompts, model.prompt_learner.eot_positions()), dim=-1)
    scale = float(tiny_clip.logit_scale.exp())
    assert torch.allclose(pos, scale * z @ text[:3].t(), atol=1e-4)
    assert torch.allclose(neg, scale * z @ text[3:].t(), atol=1e-4)
    assert not model.logit_scale.requires_grad


def test_gradients_reach_only_the_parameters_the_spec_says(tiny_clip, tiny_tokenizer):
    model = _model(tiny_clip, tiny_tokenizer)
    tuner, (pos_ctx, neg_ctx) = model.trainable_groups()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in tuner + [pos_ctx, neg_ctx]}
    images = torch.randn(4, 3, 32, 32)
    pos, neg = model(images)
    out = deft_phase1_loss(pos, neg, torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 2]),
                           in_warmup=True, prompt_labels_are_given=True)
    params = [pos_ctx, neg_ctx] + tuner

    def grads(loss):
        found = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, found)]

    def moved(g):
        return bool(g.abs().sum() > 0)

    g_dp = grads(out.loss_dp)
    assert not moved(g_dp[0]) and moved(g_dp[1])  # L_dp: only the negative context ...
    assert not any(moved(g) for g in g_dp[2:])  # ... and never the visual tuner
    g_cls = grads(out.loss_cls)
    assert moved(g_cls[0]) and not moved(g_cls[1])  # L_sim: the positive context ...
    assert all(moved(g) for g in g_cls[2:])  # ... and every VPT prompt


def test_cached_text_features_give_the_same_logits(tiny_clip, tiny_tokenizer):
    model = _model(tiny_clip, tiny_tokenizer)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cached = model.text_features()
        assert torch.allclose(model(images, cached)[0], model(images)[0])


def test_phase2_classifier_heads(tiny_clip, tiny_tokenizer):
    torch.manual_seed(0)
    model = CLIPClassifier(tiny_clip, 3, TuningConfig(finetune=True), "random")
    bound = 1 / 64 ** 0.5  # PyTorch's default Linear init U(±1/sqrt(width))
    assert model.head.weight.abs().max() <= bound and model.head.weight.shape == (3, 64)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "head.weight" in names and not any("conv1" in n or "ln_post" in n or n.endswith("proj") for n in names)
    # head_init: text makes the head the zero-shot classifier: head(f) - bias = T (f P)^T
    text_model = CLIPClassifier(tiny_clip, 3, TuningConfig(finetune=True), "text", NAMES, tiny_tokenizer)
    images = torch.randn(2, 3, 32, 32)
    features = text_model.image_encoder(images)
    text = zero_shot_classifier(tiny_clip, tiny_tokenizer, NAMES, TEMPLATE_SETS["simple"])
    expected = text_model.image_encoder.project(features) @ text.t()
    assert torch.allclose(text_model(images) - text_model.head.bias, expected, atol=1e-5)


def test_random_weights_asked_for_come_without_open_clips_random_init_warning(caplog):
    # `pretrained: none` (the miniature's pre-training starts so) is a request, not a failure to load
    with caplog.at_level(logging.WARNING):
        load_clip("deft-tiny-vit", "none")
    assert "No pretrained weights loaded" not in caplog.text
    assert not logging.getLogger().filters  # the filter is gone after the build
    with caplog.at_level(logging.WARNING):  # open_clip itself still says it, elsewhere
        open_clip.create_model("deft-tiny-vit", pretrained=None)
    assert "No pretrained weights loaded for model 'deft-tiny-vit'" in caplog.text
