"""Tests for models/peft.py: the PEFT image encoder against open_clip and hand computations."""
import copy
import functools
import json
import math
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU, VisionTransformer

from models.build import count_parameters
from models.peft import CLIPImageEncoder, TuningConfig

ROOT = Path(__file__).resolve().parents[1]
TINY_CFG = json.loads((ROOT / "models" / "configs" / "deft-tiny-vit.json").read_text())
WIDTH, LAYERS, HEADS, PATCH, IMAGE = 64, 3, 4, 8, 32
GRID_TOKENS = (IMAGE // PATCH) ** 2  # 16
NUM_TOKENS = 1 + GRID_TOKENS  # CLS + patches


def _randomise_(module: torch.nn.Module, seed: int) -> None:
    """Perturb every parameter so zero biases / unit LayerNorms cannot hide a missing term."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


@functools.lru_cache(maxsize=None)
def _base_clip(seed: int) -> open_clip.CLIP:
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CFG)
    _randomise_(model.visual, seed + 1)
    return model.eval()


def make_clip(seed: int = 0) -> open_clip.CLIP:
    """A fresh copy of the tiny CLIP (built once per seed; the encoder freezes its parameters)."""
    return copy.deepcopy(_base_clip(seed))


def make_single_block_visual(seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    visual = VisionTransformer(image_size=IMAGE, patch_size=PATCH, width=WIDTH, layers=1, heads=HEADS,
                               mlp_ratio=4.0, output_dim=32, act_layer=QuickGELU)
    _randomise_(visual, seed + 1)
    return visual.eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(123))


def reference_features(visual: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """ln_post(CLS) via open_clip's own embedding and blocks."""
    x = visual.transformer(visual._embeds(images))
    return visual.ln_post(x[:, 0])


def set_ssf_identity_(encoder: CLIPImageEncoder) -> None:
    with torch.no_grad():
        for name, p in encoder.block_tuners.named_parameters():
            if ".ssf_" in name:
                p.fill_(1.0 if name.endswith("scale") else 0.0)


# ---------------------------------------------------------------------------------------------
# equivalence with open_clip

def test_no_tuner_matches_open_clip(images):
    model = make_clip()
    expected = model.encode_image(images)
    encoder = CLIPImageEncoder(model.visual, TuningConfig())
    assert not encoder.uses_custom_blocks
    features = encoder(images)
    assert features.shape == (2, WIDTH)
    assert (encoder.project(features) - expected).abs().max() < 1e-5
    assert encoder.output_dim == TINY_CFG["embed_dim"]


@pytest.mark.parametrize("tuning", [
    TuningConfig(lora=True, lora_dim=4),
    TuningConfig(adapter=True, adapter_dim=8),
    TuningConfig(ssf=True),
    TuningConfig(lora=True, lora_dim=2, adapter=True, adapter_dim=4, ssf=True, partial=2),
], ids=["lora", "adapter-residual", "ssf-identity", "all-partial"])
def test_identity_tuners_keep_open_clip_output(images, tuning):
    """At init (and SSF set to 1/0 by hand) our block forward equals open_clip's blocks."""
    model = make_clip()
    expected = model.encode_image(images)
    encoder = CLIPImageEncoder(model.visual, tuning)
    assert encoder.uses_custom_blocks
    set_ssf_identity_(encoder)
    assert (encoder.project(encoder(images)) - expected).abs().max() < 1e-5


def test_ssf_at_init_changes_output(images):
    model = make_clip()
    expected = model.encode_image(images)
    encoder = CLIPImageEncoder(model.visual, TuningConfig(ssf=True))
    assert (encoder.project(encoder(images)) - expected).abs().max() > 1e-4


def test_adapter_replace_at_init_removes_mlp_branch(images):
    """Official x = A(x): the zero up-projection zeroes the whole MLP branch at init."""
    model = make_clip()
    visual = model.visual
    encoder = CLIPImageEncoder(visual, TuningConfig(adapter=True, adapter_dim=8, adapter_mode="replace"))
    with torch.no_grad():
        x = visual._embeds(images)
        for block in visual.transformer.resblocks:
            x = x + block.ls_1(block.attention(block.ln_1(x)))  # attention branch only
        expected = visual.ln_post(x[:, 0])
        out = encoder(images)
    assert (out - expected).abs().max() < 1e-5
    assert (out - reference_features(visual, images)).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# VPT

@pytest.mark.parametrize("tuning, tuned_layers", [
    (TuningConfig(vpt_deep=True, vpt_len=5), [0, 1, 2]),
    (TuningConfig(vpt_shallow=True, vpt_len=5), [0]),
    (TuningConfig(vpt_deep=True, vpt_len=5, partial=2), [1, 2]),
    (TuningConfig(vpt_shallow=True, vpt_len=5, partial=1), [0]),  # shallow ignores partial
])
def test_vpt_parameter_counts(tuning, tuned_layers):
    encoder = CLIPImageEncoder(make_clip().visual, tuning)
    assert count_parameters(encoder.tuner_parameters()) == len(tuned_layers) * 5 * WIDTH  # what the log reports
    assert [i for i, t in enumerate(encoder.block_tuners) if t.prompt is not None] == tuned_layers
    assert encoder.num_prompt_tokens == 5


def test_vpt_init_bound():
    encoder = CLIPImageEncoder(make_clip().visual, TuningConfig(vpt_deep=True, vpt_len=20))
    bound = math.sqrt(6.0 / (3 * PATCH * PATCH + WIDTH))
    assert encoder.vpt_init_bound == pytest.approx(bound)
    prompts = torch.stack([t.prompt.detach() for t in encoder.block_tuners])  # (3, 20, 64)
    assert prompts.abs().max() <= bound
    assert prompts.abs().max() > 0.97 * bound  # 3840 uniform draws fill the interval
    assert prompts.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


def _vpt_reference(visual, encoder, images, deep: bool) -> torch.Tensor:
    """Truncate to CLS + patches, append the layer's prompts, run open_clip's own block."""
    x = visual._embeds(images)
    for block, tuner in zip(visual.transformer.resblocks, encoder.block_tuners):
        if tuner.prompt is not None:
            prompts = tuner.prompt.unsqueeze(0).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :NUM_TOKENS] if deep else x, prompts], dim=1)
        x = block(x)
    return visual.ln_post(x[:, 0])


@pytest.mark.parametrize("deep", [True, False], ids=["deep", "shallow"])
def test_vpt_forward_matches_reference(images, deep):
    model = make_clip()
    visual = model.visual
    tuning = TuningConfig(vpt_deep=deep, vpt_shallow=not deep, vpt_len=5)
    encoder = CLIPImageEncoder(visual, tuning)
    lengths = []
    hooks = [b.ln_1.register_forward_hook(lambda m, inp, out: lengths.append(inp[0].shape[1]))
             for b in visual.transformer.resblocks]
    with torch.no_grad():
        out = encoder(images)
    for h in hooks:
        h.remove()
    assert lengths == [NUM_TOKENS + 5] * LAYERS
    with torch.no_grad():
        expected = _vpt_reference(visual, encoder, images, deep)
    assert (out - expected).abs().max() < 1e-5
    assert (out - reference_features(visual, images)).abs().max() > 1e-3  # prompts matter


@pytest.mark.parametrize("deep", [True, False], ids=["deep", "shallow"])
def test_vpt_deep_discards_previous_prompt_outputs(images, deep):
    """Corrupting layer 0's outputs at the prompt positions: invisible to deep, not to shallow."""
    model = make_clip()
    visual = model.visual
    encoder = CLIPImageEncoder(visual, TuningConfig(vpt_deep=deep, vpt_shallow=not deep, vpt_len=5))
    with torch.no_grad():
        clean = encoder(images)

        def corrupt(module, inp, out):
            out = out.clone()
            noise = torch.randn(out[:, NUM_TOKENS:].shape, generator=torch.Generator().manual_seed(5))
            out[:, NUM_TOKENS:] += 10.0 * noise  # not a constant: LayerNorm would remove that
            return out

        # ls_2 is the identity here; its output is the MLP branch added to the residual stream.
        hook = visual.transformer.resblocks[0].ls_2.register_forward_hook(corrupt)
        corrupted = encoder(images)
        hook.remove()
    if deep:
        assert (corrupted - clean).abs().max() < 1e-6
    else:
        assert (corrupted - clean).abs().max() > 1e-3


def test_vpt_deep_every_prompt_reaches_cls_through_attention(images):
    encoder = CLIPImageEncoder(make_clip().visual, TuningConfig(vpt_deep=True, vpt_len=5))
    encoder(images).sum().backward()
    for tuner in encoder.block_tuners:
        assert tuner.prompt.grad is not None and tuner.prompt.grad.abs().max() > 0


def test_vpt_truncation_follows_patch_dropout(images):
    """With patch dropout active (training), truncation keeps CLS + the kept patches."""
    torch.manual_seed(0)
    visual = VisionTransformer(image_size=IMAGE, patch_size=PATCH, width=WIDTH, layers=2, heads=HEADS,
                               mlp_ratio=4.0, output_dim=32, patch_dropout=0.5)
    encoder = CLIPImageEncoder(visual, TuningConfig(vpt_deep=True, vpt_len=3)).train()
    lengths = []
    for b in visual.transformer.resblocks:
        b.ln_1.register_forward_hook(lambda m, inp, out: lengths.append(inp[0].shape[1]))
    encoder(images)
    assert lengths == [1 + GRID_TOKENS // 2 + 3] * 2


# ---------------------------------------------------------------------------------------------
# hand computation of one block with every module active

def _hand_block_features(visual, images, enc, adapter_mode):
    """Explicit softmax attention with SSF (before LoRA), LoRA q/v at 1/r, adapter, SSF."""
    block = visual.transformer.resblocks[0]
    tuner = enc.block_tuners[0]
    r = tuner.lora_q.A.shape[1]
    x = visual._embeds(images)
    batch, length, _ = x.shape
    h = block.ln_1(x)
    qkv = h @ block.attn.in_proj_weight.T + block.attn.in_proj_bias
    qkv = qkv * tuner.ssf_attn_in.scale + tuner.ssf_attn_in.shift
    q, k, v = qkv.split(WIDTH, dim=-1)
    q = q + h @ tuner.lora_q.A @ tuner.lora_q.B / r
    v = v + h @ tuner.lora_v.A @ tuner.lora_v.B / r
    hd = WIDTH // HEADS
    q, k, v = (t.reshape(batch, length, HEADS, hd).permute(0, 2, 1, 3) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    o = (weights @ v).permute(0, 2, 1, 3).reshape(batch, length, WIDTH)
    o = o @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
    x = x + (o * tuner.ssf_attn_out.scale + tuner.ssf_attn_out.shift)
    m = block.ln_2(x) @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias
    m = m * tuner.ssf_mlp_in.scale + tuner.ssf_mlp_in.shift
    m = m * torch.sigmoid(1.702 * m)
    m = m @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias
    m = m * tuner.ssf_mlp_out.scale + tuner.ssf_mlp_out.shift
    ad = tuner.adapter
    a = F.layer_norm(m, (WIDTH,), ad.ln.weight, ad.ln.bias, ad.ln.eps)
    a = torch.relu(a @ ad.down.weight.T + ad.down.bias) @ ad.up.weight.T + ad.up.bias
    m = m + a if adapter_mode == "residual" else a
    x = x + m
    return visual.ln_post(x[:, 0])


@pytest.mark.parametrize("adapter_mode", ["residual", "replace"])
def test_single_block_matches_hand_computation(images, adapter_mode):
    visual = make_single_block_visual()
    tuning = TuningConfig(lora=True, lora_dim=4, ssf=True, adapter=True, adapter_dim=8,
                          adapter_mode=adapter_mode)
    encoder = CLIPImageEncoder(visual, tuning)
    _randomise_(encoder.block_tuners, seed=7)  # non-zero B and up-projection, SSF away from 1/0
    with torch.no_grad():
        tuner = encoder.block_tuners[0]
        for lora in (tuner.lora_q, tuner.lora_v):
            lora.B.normal_(0.0, 0.5)
        out = encoder(images)
        expected = _hand_block_features(visual, images, encoder, adapter_mode)
        assert (out - expected).abs().max() < 1e-5
        # The check is sensitive to the LoRA scale: an alpha-free scale of 1 would differ.
        for lora in (tuner.lora_q, tuner.lora_v):
            lora.B.mul_(4.0)
        assert (encoder(images) - expected).abs().max() > 1e-3


def test_lora_delta_is_one_over_r():
    from models.peft import LoRA
    lora = LoRA(WIDTH, 4, torch.float32, torch.device("cpu"))
    with torch.no_grad():
        lora.A.copy_(torch.arange(WIDTH * 4, dtype=torch.float32).reshape(WIDTH, 4) / 1000)
        lora.B.fill_(0.5)
    x = torch.ones(1, WIDTH)
    # x @ A sums each column of A; @ B then sums the 4 columns times 0.5; divided by r = 4.
    expected = (lora.A.sum() * 0.5 / 4).item()
    assert torch.allclose(lora(x), torch.full((1, WIDTH), expected))


# ---------------------------------------------------------------------------------------------
# initialisations

def test_module_initialisations():
    encoder = CLIPImageEncoder(make_clip().visual,
                               TuningConfig(lora=True, lora_dim=4, adapter=True, adapter_dim=8, ssf=True))
    for tuner in encoder.block_tuners:
        for lora in (tuner.lora_q, tuner.lora_v):
            assert lora.A.shape == (WIDTH, 4) and lora.B.shape == (4, WIDTH)
            assert lora.A.abs().max() <= 1 / math.sqrt(4)
            assert lora.A.abs().max() > 0.9 / math.sqrt(4)
            assert torch.count_nonzero(lora.B) == 0
        ad = tuner.adapter
        assert torch.equal(ad.ln.weight, torch.ones(WIDTH)) and torch.count_nonzero(ad.ln.bias) == 0
        assert ad.down.weight.shape == (8, WIDTH)
        assert ad.down.weight.std().item() == pytest.approx(math.sqrt(1 / 3) / math.sqrt(WIDTH), rel=0.15)
        assert torch.count_nonzero(ad.down.bias) == 0
        assert torch.count_nonzero(ad.up.weight) == 0 and torch.count_nonzero(ad.up.bias) == 0
        assert tuner.ssf_attn_in.scale.shape == (3 * WIDTH,)
        assert tuner.ssf_attn_out.scale.shape == (WIDTH,)
        assert tuner.ssf_mlp_in.scale.shape == (4 * WIDTH,)
        assert tuner.ssf_mlp_out.scale.shape == (WIDTH,)
    scales = torch.cat([p.detach() for n, p in encoder.named_parameters() if n.endswith(".scale")])
    shifts = torch.cat([p.detach() for n, p in encoder.named_parameters() if n.endswith(".shift")])
    assert scales.numel() == shifts.numel() == LAYERS * (3 + 1 + 4 + 1) * WIDTH
    assert scales.mean().item() == pytest.approx(1.0, abs=0.005)
    assert shifts.mean().item() == pytest.approx(0.0, abs=0.005)
    assert scales.std().item() == pytest.approx(0.02, rel=0.1)
    assert shifts.std().item() == pytest.approx(0.02, rel=0.1)


# ---------------------------------------------------------------------------------------------
# trainable parameters

def _trainable(encoder):
    return {n for n, p in encoder.named_parameters() if p.requires_grad}


def _tuner_names(encoder):
    ids = {id(p) for p in encoder.tuner_parameters()}
    return {n for n, p in encoder.named_parameters() if id(p) in ids}


def test_trainable_sets():
    def build(**kw):
        model = make_clip()
        return model, CLIPImageEncoder(model.visual, TuningConfig(**kw))

    _, enc = build()
    assert _trainable(enc) == set() and enc.tuner_parameters() == []

    for kw, prefix in [(dict(lora=True, lora_dim=2), ".lora_"), (dict(adapter=True, adapter_dim=2), ".adapter."),
                       (dict(ssf=True), ".ssf_"), (dict(vpt_deep=True, vpt_len=2), ".prompt")]:
        model, enc = build(**kw)
        names = _trainable(enc)
        assert names and all(n.startswith("block_tuners.") and prefix in n for n in names)
        assert names == _tuner_names(enc)
        assert not any(p.requires_grad for p in model.visual.parameters())

    model, enc = build(bias_tuning=True)
    visual_names = {"visual." + n for n, _ in model.visual.named_parameters()}
    names = _trainable(enc)
    assert names == {n for n in visual_names if n.endswith("bias")}
    assert {"visual.ln_pre.bias", "visual.ln_post.bias", "visual.transformer.resblocks.0.attn.in_proj_bias",
            "visual.transformer.resblocks.2.mlp.c_fc.bias"} <= names

    _, enc = build(finetune=True)
    names = _trainable(enc)
    assert names == {n for n in visual_names if n.startswith("visual.transformer.")}
    assert "visual.transformer.resblocks.1.ln_1.weight" in names
    for frozen in ["visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding",
                   "visual.ln_pre.weight", "visual.ln_post.weight", "visual.ln_post.bias", "visual.proj"]:
        assert frozen not in names

    _, enc = build(finetune=True, finetune_scope="all")
    assert _trainable(enc) == visual_names

    _, enc = build(ssf=True, bias_tuning=True, partial=1)
    names = _trainable(enc)
    assert {n for n in names if n.startswith("block_tuners.")} == {
        n for n, _ in enc.named_parameters() if n.startswith("block_tuners.2.ssf_")}
    assert "visual.ln_pre.bias" in names and "visual.ln_pre.weight" not in names
    assert names == _tuner_names(enc)
    # The module list holds each visual parameter once even when two tuners select it.
    _, enc = build(bias_tuning=True, finetune=True)
    assert len(enc.tuner_parameters()) == len({id(p) for p in enc.tuner_parameters()})


# ---------------------------------------------------------------------------------------------
# validation and unsupported towers

@pytest.mark.parametrize("kwargs, key", [
    (dict(vpt_shallow=True, vpt_deep=True, vpt_len=4), "vpt_shallow"),
    (dict(vpt_deep=True), "vpt_len"),
    (dict(vpt_shallow=True, vpt_len=0), "vpt_len"),
    (dict(lora=True), "lora_dim"),
    (dict(adapter=True, adapter_dim=-1), "adapter_dim"),
    (dict(adapter_mode="sum"), "adapter_mode"),
    (dict(finetune_scope="head"), "finetune_scope"),
    (dict(partial=0), "partial"),
])
def test_config_validation(kwargs, key):
    with pytest.raises(ValueError, match=key):
        TuningConfig(**kwargs)


def test_partial_larger_than_depth_rejected():
    with pytest.raises(ValueError, match="partial"):
        CLIPImageEncoder(make_clip().visual, TuningConfig(lora=True, lora_dim=2, partial=LAYERS + 1))
    CLIPImageEncoder(make_clip().visual, TuningConfig(lora=True, lora_dim=2, partial=LAYERS))


def test_unsupported_visual_towers():
    common = dict(image_size=IMAGE, patch_size=PATCH, width=WIDTH, layers=1, heads=HEADS, mlp_ratio=4.0,
                  output_dim=32)
    with pytest.raises(ValueError, match="attentional pooling"):
        CLIPImageEncoder(VisionTransformer(**common, attentional_pool=True, attn_pooler_heads=4,
                                           attn_pooler_queries=4), TuningConfig())
    with pytest.raises(ValueError, match="pool_type"):
        CLIPImageEncoder(VisionTransformer(**common, pool_type="avg"), TuningConfig())
    custom = VisionTransformer(**common, qk_norm=True)
    CLIPImageEncoder(custom, TuningConfig(bias_tuning=True))  # runs the blocks as they are
    with pytest.raises(ValueError, match="ResidualAttentionBlock"):
        CLIPImageEncoder(custom, TuningConfig(lora=True, lora_dim=2))


# ---------------------------------------------------------------------------------------------
# dtype, checkpointing

def test_new_parameters_follow_fp16_visual_dtype():
    model = open_clip.CLIP(**TINY_CFG, cast_dtype=torch.float16)
    open_clip.model.convert_weights_to_lp(model, dtype=torch.float16)
    tuning = TuningConfig(vpt_deep=True, vpt_len=3, lora=True, lora_dim=2, adapter=True, adapter_dim=4, ssf=True)
    encoder = CLIPImageEncoder(model.visual, tuning)
    new = list(encoder.block_tuners.parameters())
    assert new and all(p.dtype == torch.float16 for p in new)
    assert all(p.requires_grad for p in new)
    assert model.visual.ln_post.weight.dtype == torch.float32  # open_clip keeps LayerNorms fp32
    features = encoder(torch.randn(2, 3, IMAGE, IMAGE))  # fp16 matmuls run on CPU with this torch
    assert features.dtype == torch.float16 and torch.isfinite(features).all()


def test_grad_checkpointing_same_output(images):
    model = make_clip()
    encoder = CLIPImageEncoder(model.visual, TuningConfig(vpt_deep=True, vpt_len=2, lora=True, lora_dim=2))
    with torch.no_grad():
        for t in encoder.block_tuners:
            t.lora_q.B.normal_()
    plain = encoder(images)
    model.visual.set_grad_checkpointing(True)
    checkpointed = encoder(images)
    assert (plain - checkpointed).abs().max() < 1e-6
    checkpointed.sum().backward()
    assert all(t.lora_q.B.grad is not None for t in encoder.block_tuners)
