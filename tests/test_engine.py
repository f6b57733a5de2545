"""The shared engine: global-batch means, micro-batches, the sharded sampler and per-sample records."""
import copy

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from models.deft import DeFTModel
from models.peft import TuningConfig
from utils.engine import LossTerm, PerSampleRecorder, StepOutput, make_grad_scaler, train_one_epoch
from utils.loader import EpochSampler, make_loader
from lnl.losses import deft_phase1_loss
from lnl.selection import small_loss_selection

CPU = torch.device("cpu")
NAMES = ["cat", "dog", "bird", "fish"]


def one_batch_loader(num_samples: int, num_classes: int, batch_size: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(num_samples, 3, 32, 32, generator=generator)
    given = torch.randint(num_classes, (num_samples,), generator=generator)
    complementary = (given + 1 + torch.randint(num_classes - 1, (num_samples,), generator=generator)) % num_classes
    dataset = TensorDataset(images, given, complementary, torch.arange(num_samples))
    return make_loader(dataset, batch_size, False, 0, CPU)


def phase1_step(model):
    def step(batch, weights_only, text_features=None):
        pos, neg = model(batch.images, text_features)
        out = deft_phase1_loss(pos, neg, batch.given_labels, batch.complementary_labels, in_warmup=False,
                               prompt_labels_are_given=False)
        return StepOutput({"cls": LossTerm(out.cls_values, out.cls_weights), "dp": LossTerm(out.dp_values)},
                          per_sample={"selected": out.selected})
    return step


def one_update(model, step, loader, micro_batch_size, share_text=False):
    model = copy.deepcopy(model)
    tuner, prompts = model.trainable_groups()
    optimizer = torch.optim.SGD([{"params": tuner}, {"params": prompts}], lr=0.5)
    result = train_one_epoch(step(model), loader, optimizer, make_grad_scaler("fp32", CPU), "fp32", CPU, 1,
                             progress=False, micro_batch_size=micro_batch_size,
                             shared=model.text_features if share_text else None)
    return model, result


def test_micro_batches_give_the_full_batch_update_with_a_partial_selection(tiny_clip, tiny_tokenizer):
    torch.manual_seed(5)  # prompts under which 1 of the 10 samples is selected, none near p_clean = 0.5
    model = DeFTModel(tiny_clip, NAMES, tiny_tokenizer, TuningConfig(vpt_deep=True, vpt_len=2), n_ctx=4)
    loader = one_batch_loader(10, len(NAMES), batch_size=10)
    full, full_result = one_update(model, phase1_step, loader, None)
    selected = full_result.per_sample["selected"]
    assert 0 < selected.sum() < len(selected)  # a partial selection: L_sim averages over a subset
    # chunks of 3, 3, 3 and 1; the text features per chunk, or shared (computed and back-propagated once)
    for share_text in (False, True):
        micro, micro_result = one_update(model, phase1_step, loader, 3, share_text)
        assert np.array_equal(selected, micro_result.per_sample["selected"])
        assert micro_result.record["loss"] == pytest.approx(full_result.record["loss"], rel=1e-5)
        moved = 0.0
        for (name, p_full), p_micro, p_start in zip(full.named_parameters(), micro.parameters(), model.parameters()):
            if p_full.requires_grad:
                assert torch.allclose(p_full, p_micro, atol=1e-5), (name, share_text)  # float summation order
                moved += float((p_full - p_start).abs().sum())
        assert moved > 0  # the update is not trivially zero

    # The hand route: L = mean CE over the selected samples + mean L_dp, one backward on the whole batch.
    hand = copy.deepcopy(model)
    batch = loader.dataset.tensors
    pos, neg = hand(batch[0])
    out = deft_phase1_loss(pos, neg, batch[1], batch[2], in_warmup=False, prompt_labels_are_given=False)
    out.loss.backward()
    with torch.no_grad():
        for p_hand, p_full in zip(hand.parameters(), full.parameters()):
            if p_hand.requires_grad:
                assert torch.allclose(p_hand - 0.5 * p_hand.grad, p_full, atol=1e-6)


def test_a_batch_rule_sees_the_whole_global_batch_under_micro_batches():
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 3)
    features = torch.randn(9, 6)
    labels = torch.randint(3, (9,))
    loader = make_loader(TensorDataset(features, labels, labels, torch.arange(9)), 9, False, 0, CPU)

    def step(batch, weights_only):
        losses = torch.nn.functional.cross_entropy(head(batch.images), batch.given_labels, reduction="none")
        return StepOutput({"ce": LossTerm(losses, batch_rule=lambda v: small_loss_selection(v, 0.5))})

    grads = []
    for micro in (None, 2):
        head.zero_grad()
        optimizer = torch.optim.SGD(head.parameters(), lr=0.0)  # keep the weights: compare gradients
        result = train_one_epoch(step, loader, optimizer, make_grad_scaler("fp32", CPU), "fp32", CPU, 1, False, micro)
        grads.append([p.grad.clone() for p in head.parameters()])
        kept = result.per_sample["weight_ce"] > 0
        losses = torch.nn.functional.cross_entropy(head(features), labels, reduction="none").detach()
        assert kept.sum() == 4 and set(np.flatnonzero(kept)) == set(torch.argsort(losses)[:4].tolist())
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(*grads))


def test_an_empty_selection_adds_nothing_and_is_not_nan():
    weight = torch.nn.Parameter(torch.ones(2))
    loader = make_loader(TensorDataset(torch.ones(4, 2), torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long),
                                       torch.arange(4)), 4, False, 0, CPU)

    def step(batch, weights_only):
        values = (batch.images * weight).sum(dim=1)
        return StepOutput({"none": LossTerm(values, torch.zeros(len(values))), "all": LossTerm(values)})

    optimizer = torch.optim.SGD([weight], lr=0.1)
    result = train_one_epoch(step, loader, optimizer, make_grad_scaler("fp32", CPU), "fp32", CPU, 1, False)
    assert result.record["loss_none"] == 0.0 and result.record["loss_all"] == pytest.approx(2.0)
    assert torch.allclose(weight, torch.full((2,), 0.9))  # only the "all" term moved it


def test_the_sampler_deals_the_single_process_batches_out_to_the_ranks():
    dataset = list(range(11))
    single = EpochSampler(dataset, shuffle=True, seed=3)
    ranks = [EpochSampler(dataset, shuffle=True, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for sampler in (single, *ranks):
        sampler.set_epoch(4)
    order = list(single)
    assert sorted(order) == dataset and order != dataset
    shards = [list(s) for s in ranks]
    assert [len(s) for s in shards] == [6, 6]  # padded to 12
    per_rank_batch = 2  # global batch 4
    for k in range(3):
        global_batch = sum((s[k * per_rank_batch:(k + 1) * per_rank_batch] for s in shards), [])
        assert sorted(global_batch) == sorted((order + order[:1])[4 * k:4 * k + 4])
    # rank 1's last position is the padding (position 11 = a repeat of position 0)
    assert ranks[1].valid(4, 2).tolist() == [True, False] and ranks[0].valid(4, 2).tolist() == [True, True]
    other_epoch = EpochSampler(dataset, shuffle=True, seed=3)
    other_epoch.set_epoch(5)
    assert list(other_epoch) != order


def test_the_recorder_refuses_a_sample_decided_twice():
    recorder = PerSampleRecorder(4)
    recorder.add(torch.tensor([0, 1]), torch.tensor([True, True]), {"x": torch.tensor([1.0, 2.0])})
    recorder.add(torch.tensor([1, 2]), torch.tensor([True, True]), {"x": torch.tensor([3.0, 4.0])})
    with pytest.raises(RuntimeError, match="at most 2 decisions"):
        recorder.gather(expected=3)
    recorder = PerSampleRecorder(4)
    recorder.add(torch.tensor([3, 0]), torch.tensor([True, False]), {"x": torch.tensor([5.0, 6.0])})  # 0: padding
    values, seen = recorder.gather(expected=1)
    assert values["x"].tolist() == [0.0, 0.0, 0.0, 5.0] and seen.tolist() == [False, False, False, True]


def test_grad_checkpointing_recomputes_activations_and_gives_the_same_gradients(monkeypatch):
    import open_clip.transformer
    import models.peft
    from models.build import build_deft_model
    from utils.config import Config, apply_overrides

    calls = []
    for module in (models.peft, open_clip.transformer):
        real = module.checkpoint
        monkeypatch.setattr(module, "checkpoint", lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k))
    cfg = apply_overrides(Config(), {"backbone": "deft-tiny-vit", "pretrained": "none", "vpt_deep": True,
                                     "vpt_len": 2, "N_CTX": 4, "resolution": 32}, "test")
    images, given = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    gradients = {}
    for enabled in (False, True):
        torch.manual_seed(0)
        model = build_deft_model(apply_overrides(cfg, {"grad_checkpointing": enabled}, "test"), NAMES, CPU)
        calls.clear()
        pos, neg = model(images)
        deft_phase1_loss(pos, neg, given, (given + 1) % 4, in_warmup=True, prompt_labels_are_given=True).loss.backward()
        gradients[enabled] = [p.grad for p in model.parameters() if p.requires_grad]
        assert bool(calls) == enabled  # the image blocks and the text blocks went through checkpoint()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(gradients[False], gradients[True]))


def test_only_loaders_of_unchanging_data_keep_their_workers():
    """Test and scoring loaders keep their worker processes; training loaders are forked per epoch
    (the epoch's complementary labels and augmentation are set in this process)."""
    data = TensorDataset(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long))
    cpu = torch.device("cpu")
    assert make_loader(data, 2, False, 1, cpu, persistent=True).persistent_workers
    assert not make_loader(data, 2, True, 1, cpu).persistent_workers
    assert not make_loader(data, 2, False, 0, cpu, persistent=True).persistent_workers  # no workers to keep
