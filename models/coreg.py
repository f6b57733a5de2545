"""Co-Reg's two student networks, each with a projection head and a momentum (key) encoder.

A network maps images to class logits (a linear classifier on the encoder's feature) and to a
projected, normalised feature z in a d′-dimensional space (a two-layer MLP head), where the
prototypes and the contrastive loss live. Its momentum encoder is a copy of encoder + head that
is reset to the network at the start of each co-training epoch and then follows it by an EMA
(the official behaviour); the queue keeps the last keys with their pseudo-labels and sets.
The paper's students are PreAct ResNet-18s trained from scratch (He et al. 2016, identity
mappings, CIFAR stem); `width` scales their channels. Any timm model can stand in.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------- PreAct ResNet-18
class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity (or 1x1-conv) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """Images (b, 3, H, W) -> pooled features (b, 8·width); four stages of two blocks, strides 1, 2, 2, 2."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        stages, in_planes = [], width
        for planes, stride in ((width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)):
            stages += [PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes, 1)]
            in_planes = planes
        self.blocks = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(in_planes)
        self.num_features = in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


class TimmEncoder(nn.Module):
    """A timm model without its classifier: images -> pooled pre-logit features."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.num_features = net.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


# ---------------------------------------------------------------- one student
class CoRegNetwork(nn.Module):
    """Encoder -> (logits, projected normalised feature); a momentum copy and a queue of its keys."""

    def __init__(self, encoder: nn.Module, num_classes: int, proj_dim: int = 128, queue_size: int = 8192) -> None:
        super().__init__()
        dim = encoder.num_features
        self.encoder = encoder
        self.classifier = nn.Linear(dim, num_classes)
        self.projector = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, proj_dim))
        self.key_encoder = copy.deepcopy(encoder)
        self.key_projector = copy.deepcopy(self.projector)
        for param in self._key_parameters():
            param.requires_grad_(False)
        # the queue starts with random unit keys that belong to no class (label -1): negatives only
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_labels", torch.full((queue_size,), -1, dtype=torch.long))
        self.register_buffer("queue_partial", torch.zeros(queue_size, dtype=torch.bool))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def _key_parameters(self) -> list[nn.Parameter]:
        return list(self.key_encoder.parameters()) + list(self.key_projector.parameters())

    def _query_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters()) + list(self.projector.parameters())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Encoder, classifier and projection head (not the momentum copy)."""
        return self._query_parameters() + list(self.classifier.parameters())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (b, C), projected normalised features (b, d′))."""
        features = self.encoder(images)
        return self.classifier(features), F.normalize(self.projector(features), dim=1)

    @torch.no_grad()
    def reset_key_encoder(self) -> None:
        """Copy the network into its momentum encoder (the start of every co-training epoch)."""
        for key, query in zip(self._key_parameters(), self._query_parameters()):
            key.copy_(query)

    @torch.no_grad()
    def key_features(self, images: torch.Tensor, momentum: float) -> torch.Tensor:
        """One EMA step key ← m·key + (1 - m)·query, then the keys (b, d′) of `images`."""
        for key, query in zip(self._key_parameters(), self._query_parameters()):
            key.mul_(momentum).add_(query.detach(), alpha=1.0 - momentum)
        return F.normalize(self.key_projector(self.key_encoder(images)), dim=1)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor, is_partial: torch.Tensor) -> None:
        """Replace the oldest entries of the queue (a ring buffer) with these keys."""
        size = self.queue.shape[0]
        positions = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[positions] = keys.float()
        self.queue_labels[positions] = labels.long()
        self.queue_partial[positions] = is_partial.bool()
        self.queue_ptr.fill_(int((self.queue_ptr + len(keys)) % size))


class CoRegPair(nn.Module):
    """The two networks and the class prototypes o (C, d′) they share."""

    def __init__(self, net1: CoRegNetwork, net2: CoRegNetwork, num_classes: int, proj_dim: int) -> None:
        super().__init__()
        self.nets = nn.ModuleList([net1, net2])
        self.register_buffer("prototypes", torch.zeros(num_classes, proj_dim))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.nets[0].trainable_parameters() + self.nets[1].trainable_parameters()


def build_encoder(name: str, width: int, resolution: int, timm_pretrained: bool = False,
                  weights_path: str | None = None) -> nn.Module:
    """`preact_resnet18` (the paper's student, from scratch) or a timm model without its classifier."""
    if name == "preact_resnet18":
        return PreActResNet18(width)
    from models.timm_backbones import build_timm_classifier  # timm models only when asked for

    net = build_timm_classifier(name, 1, resolution, timm_pretrained, weights_path).net
    return TimmEncoder(net)
