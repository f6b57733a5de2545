"""Parameter-efficient tuning of the open_clip image encoder (DeFT's `ViT_Tuner`).

`CLIPImageEncoder` wraps an open_clip `VisionTransformer` and returns the un-projected CLS
feature f(x) = ln_post(x[:, 0]) (HotanLee/DeFT model/CLIP.py:228). When PEFT modules are active the
residual blocks are run by our own block forward, which exposes the hook points of the official
code (LIFT's design):

    ln_1 -> qkv = in_proj(x) -> [SSF] -> q, k, v -> [LoRA on q, v] -> attention -> out_proj
    -> [SSF] -> ls_1 -> residual;  ln_2 -> c_fc -> [SSF] -> act -> c_proj -> [SSF] -> [adapter]
    -> ls_2 -> residual

with optional VPT prompts appended after the patch tokens at the start of a layer. The modules
and their initialisations follow HotanLee/DeFT model/peft_modelus.py; every new parameter is
created in the dtype and on the device of the visual weights (HotanLee/DeFT model/CLIP.py:16).
Two switches deviate from / extend the official code:
`adapter_mode` ("residual" x + A(x) is our default, "replace" x = A(x) is the official) and
`finetune_scope` ("blocks" is the official, "all" also trains the stem, ln_post and proj).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

ADAPTER_MODES = ("residual", "replace")
FINETUNE_SCOPES = ("blocks", "all")


@dataclass
class TuningConfig:
    """Which tuners to attach to the image encoder (keys mirror the official YAML names)."""

    vpt_shallow: bool = False
    vpt_deep: bool = False
    vpt_len: int = 0
    lora: bool = False
    lora_dim: int = 0
    adapter: bool = False
    adapter_dim: int = 0
    adapter_mode: str = "residual"  # "residual": x + A(x) (LIFT, ours); "replace": A(x) (official)
    ssf: bool = False
    bias_tuning: bool = False
    partial: Optional[int] = None  # only the last k layers get modules; VPT-shallow ignores it
    finetune: bool = False
    finetune_scope: str = "blocks"  # "blocks" (official) or "all" visual parameters

    def __post_init__(self) -> None:
        if self.vpt_shallow and self.vpt_deep:
            raise ValueError("vpt_shallow and vpt_deep cannot both be true; enable one of them")
        if (self.vpt_shallow or self.vpt_deep) and self.vpt_len <= 0:
            raise ValueError(f"vpt_len must be a positive integer when VPT is enabled, got {self.vpt_len}")
        if self.lora and self.lora_dim <= 0:
            raise ValueError(f"lora_dim must be a positive integer when lora is enabled, got {self.lora_dim}")
        if self.adapter and self.adapter_dim <= 0:
            raise ValueError(
                f"adapter_dim must be a positive integer when adapter is enabled, got {self.adapter_dim}")
        if self.adapter_mode not in ADAPTER_MODES:
            raise ValueError(f"adapter_mode must be one of {ADAPTER_MODES}, got {self.adapter_mode!r}")
        if self.finetune_scope not in FINETUNE_SCOPES:
            raise ValueError(f"finetune_scope must be one of {FINETUNE_SCOPES}, got {self.finetune_scope!r}")
        if self.partial is not None and (isinstance(self.partial, bool) or self.partial < 1):
            raise ValueError(f"partial must be None (all layers) or an integer >= 1, got {self.partial!r}")

    @property
    def vpt(self) -> bool:
        return self.vpt_shallow or self.vpt_deep


class LoRA(nn.Module):
    """Low-rank update (x @ A @ B) / r, with no alpha (official scaling 1/r)."""

    def __init__(self, width: int, rank: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.rank = rank
        a = torch.empty(width, rank, device=device)
        # PyTorch takes fan_in = size(1) = r for this shape, so A ~ U(-1/sqrt(r), 1/sqrt(r)).
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.A = nn.Parameter(a.to(dtype))
        self.B = nn.Parameter(torch.zeros(rank, width, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.A.to(x.dtype) @ self.B.to(x.dtype)) / self.rank


class Adapter(nn.Module):
    """LayerNorm -> Linear(width, r) -> ReLU -> Linear(r, width), the up-projection zero."""

    def __init__(self, width: int, dim: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(width, device=device, dtype=dtype)  # weight 1, bias 0
        self.down = nn.Linear(width, dim, device=device, dtype=dtype)
        self.up = nn.Linear(dim, width, device=device, dtype=dtype)
        weight = torch.empty(dim, width, device=device)
        nn.init.kaiming_normal_(weight, a=math.sqrt(5))  # std = sqrt(1/3) / sqrt(width)
        with torch.no_grad():
            self.down.weight.copy_(weight)
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # LayerNorm in fp32 and back, like CLIP's own LayerNorm; robust to mixed dtypes.
        h = F.layer_norm(x.float(), self.ln.normalized_shape, self.ln.weight.float(),
                         self.ln.bias.float(), self.ln.eps).to(x.dtype)
        h = F.relu(F.linear(h, self.down.weight.to(x.dtype), self.down.bias.to(x.dtype)))
        return F.linear(h, self.up.weight.to(x.dtype), self.up.bias.to(x.dtype))


class SSF(nn.Module):
    """Elementwise scale and shift x * gamma + beta, gamma ~ N(1, 0.02^2), beta ~ N(0, 0.02^2)."""

    def __init__(self, dim: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        scale = torch.empty(dim, device=device)
        shift = torch.empty(dim, device=device)
        nn.init.normal_(scale, mean=1.0, std=0.02)
        nn.init.normal_(shift, mean=0.0, std=0.02)
        self.scale = nn.Parameter(scale.to(dtype))
        self.shift = nn.Parameter(shift.to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)


class BlockTuner(nn.Module):
    """The PEFT modules of one residual block; every attribute may be None."""

    def __init__(self) -> None:
        super().__init__()
        self.register_parameter("prompt", None)  # VPT prompts, (vpt_len, width)
        self.lora_q: Optional[LoRA] = None
        self.lora_v: Optional[LoRA] = None
        self.adapter: Optional[Adapter] = None
        self.ssf_attn_in: Optional[SSF] = None  # on qkv, 3 * width
        self.ssf_attn_out: Optional[SSF] = None  # after out_proj, width
        self.ssf_mlp_in: Optional[SSF] = None  # after c_fc, mlp width
        self.ssf_mlp_out: Optional[SSF] = None  # after c_proj, width

    def is_empty(self) -> bool:
        return next(self.parameters(), None) is None


class CLIPImageEncoder(nn.Module):
    """open_clip ViT image encoder with DeFT's PEFT hooks; forward returns ln_post(CLS)."""

    def __init__(self, visual: VisionTransformer, tuning: TuningConfig) -> None:
        super().__init__()
        _check_supported(visual)
        self.visual = visual
        self.tuning = tuning
        blocks = visual.transformer.resblocks
        num_layers = len(blocks)
        if tuning.partial is not None and not 1 <= tuning.partial <= num_layers:
            raise ValueError(
                f"partial must be between 1 and the number of layers ({num_layers}), got {tuning.partial}")
        first_tuned = 0 if tuning.partial is None else num_layers - tuning.partial

        dtype = visual.transformer.get_cast_dtype()
        device = visual.conv1.weight.device
        width = visual.class_embedding.shape[-1]
        patch_h, patch_w = visual.patch_size
        self.vpt_init_bound = math.sqrt(6.0 / (3 * patch_h * patch_w + width))

        if tuning.vpt or tuning.lora or tuning.adapter or tuning.ssf:
            # Our block forward then runs every block, tuned or not.
            for i, block in enumerate(blocks):
                _check_block(block, i)
        self.block_tuners = nn.ModuleList()
        for i, block in enumerate(blocks):
            tuner = BlockTuner()
            tuned = i >= first_tuned
            if (tuning.vpt_deep and tuned) or (tuning.vpt_shallow and i == 0):
                prompt = torch.empty(tuning.vpt_len, width, device=device)
                nn.init.uniform_(prompt, -self.vpt_init_bound, self.vpt_init_bound)
                tuner.prompt = nn.Parameter(prompt.to(dtype))
            if tuned and tuning.lora:
                tuner.lora_q = LoRA(width, tuning.lora_dim, dtype, device)
                tuner.lora_v = LoRA(width, tuning.lora_dim, dtype, device)
            if tuned and tuning.adapter:
                tuner.adapter = Adapter(width, tuning.adapter_dim, dtype, device)
            if tuned and tuning.ssf:
                mlp_width = block.mlp.c_fc.out_features
                tuner.ssf_attn_in = SSF(3 * width, dtype, device)
                tuner.ssf_attn_out = SSF(width, dtype, device)
                tuner.ssf_mlp_in = SSF(mlp_width, dtype, device)
                tuner.ssf_mlp_out = SSF(width, dtype, device)
            self.block_tuners.append(tuner)
        self.uses_custom_blocks = any(not t.is_empty() for t in self.block_tuners)
        self.configure_trainable()

    # ----------------------------------------------------------------------------------------
    # parameters

    @property
    def num_prompt_tokens(self) -> int:
        """Prompt tokens appended to the sequence (0 without VPT)."""
        return self.tuning.vpt_len if self.tuning.vpt else 0

    @property
    def width(self) -> int:
        return self.visual.class_embedding.shape[-1]

    @property
    def output_dim(self) -> int:
        """Dimension of `project(forward(x))`."""
        return self.visual.proj.shape[1]

    def tuner_parameters(self) -> List[nn.Parameter]:
        """The parameters this tuning configuration trains (new PEFT modules and/or visual ones)."""
        params: List[nn.Parameter] = list(self.block_tuners.parameters())
        if self.tuning.bias_tuning:
            params += [p for name, p in self.visual.named_parameters() if name.endswith("bias")]
        if self.tuning.finetune:
            scope = self.visual.transformer if self.tuning.finetune_scope == "blocks" else self.visual
            params += list(scope.parameters())
        return list(_unique(params))

    def configure_trainable(self) -> None:
        """Freeze every parameter, then unfreeze exactly `tuner_parameters()`."""
        for p in self.parameters():
            p.requires_grad_(False)
        for p in self.tuner_parameters():
            p.requires_grad_(True)

    # ----------------------------------------------------------------------------------------
    # forward

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> f(x) = ln_post(CLS token), (B, width), not projected."""
        visual = self.visual
        x = self.embed(images)  # (B, 1 + grid tokens, width)
        if not self.uses_custom_blocks:
            x = visual.transformer(x)
        else:
            num_tokens = x.shape[1]  # CLS + patches (after patch dropout)
            checkpointing = visual.transformer.grad_checkpointing and torch.is_grad_enabled()
            for block, tuner in zip(visual.transformer.resblocks, self.block_tuners):
                if tuner.prompt is not None:
                    # Drop the previous layer's prompt outputs, append this layer's prompts.
                    prompts = tuner.prompt.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
                    x = torch.cat([x[:, :num_tokens], prompts], dim=1)
                if checkpointing:
                    x = checkpoint(self._block_forward, block, tuner, x, use_reentrant=False)
                else:
                    x = self._block_forward(block, tuner, x)
        return visual.ln_post(x[:, 0])

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """f(x) -> z = f(x) @ proj, the CLIP image embedding (not normalised)."""
        if self.visual.proj is None:
            raise ValueError("this VisionTransformer has no projection (proj is None)")
        return features @ self.visual.proj

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patchify, prepend the class token, add positions, patch dropout, ln_pre (HotanLee/DeFT model/CLIP.py:125-131)."""
        visual = self.visual
        x = visual.conv1(images.to(visual.conv1.weight.dtype))  # (B, width, gh, gw)
        x = x.flatten(2).transpose(1, 2)  # (B, grid tokens, width)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + visual.positional_embedding.to(x.dtype)
        x = visual.patch_dropout(x)
        return visual.ln_pre(x)

    def _block_forward(self, block: ResidualAttentionBlock, tuner: BlockTuner,
                       x: torch.Tensor) -> torch.Tensor:
        """One residual block with the official hook points; x is (B, L, width)."""
        attn = block.attn
        h = block.ln_1(x)
        qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)  # (B, L, 3 * width)
        if tuner.ssf_attn_in is not None:
            qkv = tuner.ssf_attn_in(qkv)  # official order: SSF before the LoRA addition
        q, k, v = qkv.chunk(3, dim=-1)
        if tuner.lora_q is not None:
            q = q + tuner.lora_q(h)
            v = v + tuner.lora_v(h)
        batch, length, width = q.shape
        heads = attn.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, L, width) -> (B, heads, L, head_dim)
            return t.reshape(batch, length, heads, width // heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        out = attn.out_proj(out.transpose(1, 2).reshape(batch, length, width))
        if tuner.ssf_attn_out is not None:
            out = tuner.ssf_attn_out(out)
        x = x + block.ls_1(out)

        mlp = block.mlp
        h = mlp.c_fc(block.ln_2(x))
        if tuner.ssf_mlp_in is not None:
            h = tuner.ssf_mlp_in(h)
        h = mlp.c_proj(mlp.gelu(h))
        if tuner.ssf_mlp_out is not None:
            h = tuner.ssf_mlp_out(h)
        if tuner.adapter is not None:
            h = h + tuner.adapter(h) if self.tuning.adapter_mode == "residual" else tuner.adapter(h)
        return x + block.ls_2(h)


def _unique(params: List[nn.Parameter]) -> Iterator[nn.Parameter]:
    seen = set()
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            yield p


def _check_supported(visual: VisionTransformer) -> None:
    if not isinstance(visual, VisionTransformer):
        raise TypeError(
            f"CLIPImageEncoder needs an open_clip VisionTransformer, got {type(visual).__name__}; "
            "ResNet and timm towers are not supported")
    if getattr(visual, "attn_pool", None) is not None:
        raise ValueError("attentional pooling (CoCa-style attn_pool) is not supported; "
                         "DeFT reads the CLS token of a plain CLIP ViT")
    if visual.pool_type != "tok":
        raise ValueError(f"pool_type must be 'tok' (CLS token), got {visual.pool_type!r}")


def _check_block(block: nn.Module, index: int) -> None:
    """Our block forward reproduces open_clip's default ResidualAttentionBlock only."""
    where = f"resblocks[{index}]"
    if not isinstance(block, ResidualAttentionBlock):
        raise ValueError(f"{where} is a {type(block).__name__}; PEFT hooks need open_clip's default "
                         "ResidualAttentionBlock (no qk_norm / scaled-cosine / custom block options)")
    attn = block.attn
    if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
        raise ValueError(f"{where}.attn must be an nn.MultiheadAttention with a fused in_proj_weight")
    if attn.bias_k is not None or attn.add_zero_attn:
        raise ValueError(f"{where}.attn uses bias_k/bias_v or add_zero_attn, which are not supported")
    if hasattr(block, "ln_1_kv"):
        raise ValueError(f"{where} is a cross-attention block, which is not supported")
