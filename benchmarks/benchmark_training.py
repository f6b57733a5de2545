"""Training speed and memory of DeFT phase 1 and phase 2, as JSON.

    python benchmarks/benchmark_training.py --model ViT-B-16-quickgelu --resolution 224 \
        --num_classes 100 --batch_size 8 --precision fp32 --device auto --text_path both
    python benchmarks/benchmark_training.py --num_classes 200 --batch_size 64 --memory_options \
        --micro_batch_size 16

Random weights (nothing is downloaded) and random images: it measures the cost of the official
configuration (VPT-deep 20 tokens, 16 context tokens per polarity; phase 2 full fine-tuning of
the visual blocks), not accuracy. Every step is the engine's (`utils.engine.train_one_epoch` on
one batch), so `--micro_batch_size` and `--grad_checkpointing` cost what they cost in training.
`--text_path official` encodes the 2C prompts the official way (two passes of C prompts at 77
tokens); `ours` encodes one batch of 2C prompts cut after the longest prompt; `both` measures the
two in the same run. `--memory_options` measures phase 1 and phase 2 plain, with
grad_checkpointing, and with micro-batches. Each measurement runs in a fresh process so that peak
memory (CUDA allocator peak, or peak resident memory on CPU) is its own.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.classifier import CLIPClassifier  # noqa: E402
from models.clip_loader import load_clip, tokenizer_for  # noqa: E402
from models.deft import DeFTModel  # noqa: E402
from models.peft import TuningConfig  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from utils.engine import LossTerm, StepOutput, make_grad_scaler, resolve_device, train_one_epoch  # noqa: E402
from utils.loader import Batch, make_loader  # noqa: E402
from lnl.losses import deft_phase1_loss  # noqa: E402

MEASUREMENTS = ("phase1-ours", "phase1-official", "phase2")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def official_text_features(model: DeFTModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The official text path: positive and negative prompts in two passes of C at full length."""
    prompts = model.prompt_learner(truncate=False)
    eot = model.prompt_learner.eot_positions()
    num_classes = model.prompt_learner.num_classes
    pos = model.text_encoder(prompts[:num_classes], eot[:num_classes])
    neg = model.text_encoder(prompts[num_classes:], eot[num_classes:])
    return (torch.nn.functional.normalize(pos.float(), dim=-1),
            torch.nn.functional.normalize(neg.float(), dim=-1))


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(args: argparse.Namespace, which: str) -> dict:
    """Time `args.steps` optimiser steps (after `args.warmup_steps`) of one configuration."""
    device = resolve_device(args.device)
    torch.manual_seed(0)
    clip_model = load_clip(args.model, "none", args.precision, device)
    if args.grad_checkpointing:
        clip_model.set_grad_checkpointing(True)
    for param in clip_model.parameters():
        param.requires_grad_(False)
    class_names = [f"class {i}" for i in range(args.num_classes)]
    labels = torch.randint(args.num_classes, (args.batch_size,))
    complementary = (labels + torch.randint(1, args.num_classes, labels.shape)) % args.num_classes
    images = torch.randn(args.batch_size, 3, args.resolution, args.resolution)
    loader = make_loader(TensorDataset(images, labels, complementary, torch.arange(args.batch_size)),
                         args.batch_size, False, 0, device)
    scaler = make_grad_scaler(args.precision, device)
    text_seconds = []

    if which.startswith("phase1"):
        model = DeFTModel(clip_model, class_names, tokenizer_for(args.model),
                          TuningConfig(vpt_deep=True, vpt_len=args.vpt_len), n_ctx=args.n_ctx).to(device)
        tuner, prompts = model.trainable_groups()
        optimizer = torch.optim.SGD([{"params": tuner}, {"params": prompts}], lr=1e-3, momentum=0.9)
        encode_text = official_text_features if which.endswith("official") else type(model).text_features

        def text_features() -> tuple[torch.Tensor, torch.Tensor]:  # once per step, as in main_phase1.py
            _sync(device)
            start = time.perf_counter()
            text = encode_text(model)
            _sync(device)
            text_seconds.append(time.perf_counter() - start)
            return text

        def step(batch: Batch, weights_only: bool, text: tuple) -> StepOutput:
            pos, neg = model(batch.images, text)
            out = deft_phase1_loss(pos, neg, batch.given_labels, batch.complementary_labels, False, False)
            return StepOutput({"cls": LossTerm(out.cls_values, out.cls_weights), "dp": LossTerm(out.dp_values)})
    else:
        model = CLIPClassifier(clip_model, args.num_classes, TuningConfig(finetune=True)).to(device)
        optimizer = torch.optim.SGD(model.trainable_parameters(), lr=1e-3, momentum=0.9)

        def step(batch: Batch, weights_only: bool) -> StepOutput:
            if weights_only:
                return StepOutput({"ce": LossTerm(None)})
            logits = model(batch.images).float()
            return StepOutput({"ce": LossTerm(torch.nn.functional.cross_entropy(logits, batch.given_labels,
                                                                                reduction="none"))})

    model.train()
    step_seconds, text_per_step = [], []
    for _ in range(args.warmup_steps + args.steps):
        text_seconds.clear()
        _sync(device)
        start = time.perf_counter()
        train_one_epoch(step, loader, optimizer, scaler, args.precision, device, 1, False, args.micro_batch_size,
                        shared=text_features if which.startswith("phase1") else None)
        _sync(device)
        step_seconds.append(time.perf_counter() - start)
        text_per_step.append(sum(text_seconds))
    timed = step_seconds[args.warmup_steps:]
    result = {"measurement": which, "grad_checkpointing": args.grad_checkpointing,
              "micro_batch_size": args.micro_batch_size,
              "images_per_second": args.batch_size * len(timed) / sum(timed),
              "seconds_per_step": sum(timed) / len(timed), "peak_memory_mb": round(_peak_memory_mb(device), 1)}
    if which.startswith("phase1"):
        text = text_per_step[args.warmup_steps:]
        result["text_forward_ms_per_step"] = 1000 * sum(text) / len(text)
        result["text_sequence_length"] = (model.prompt_learner.seq_len if which.endswith("ours")
                                          else model.prompt_learner.token_ids.shape[1])
    return result


def _without_option(argv: list[str], name: str) -> list[str]:
    """argv without `name` and its value."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == name:
            skip = True
        elif not item.startswith(name + "="):
            out.append(item)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16-quickgelu", help="open_clip name (or ViT-B/16)")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--num_classes", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "amp", "fp16"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--text_path", default="both", choices=("ours", "official", "both"))
    parser.add_argument("--vpt_len", type=int, default=20)
    parser.add_argument("--n_ctx", type=int, default=16)
    parser.add_argument("--grad_checkpointing", action="store_true", help="open_clip's activation checkpointing")
    parser.add_argument("--micro_batch_size", type=int, default=None, help="gradient accumulation chunks")
    parser.add_argument("--memory_options", action="store_true",
                        help="phase 1 (our text path) and phase 2 plain, with grad_checkpointing, and with "
                             "--micro_batch_size (default batch_size / 4)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup_steps", type=int, default=1)
    parser.add_argument("--only", choices=MEASUREMENTS, help=argparse.SUPPRESS)  # one measurement, in-process
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    if args.only:
        print(json.dumps(measure(args, args.only)))
        return
    wanted = ["phase1-ours", "phase1-official"] if args.text_path == "both" else [f"phase1-{args.text_path}"]
    base = [a for a in sys.argv[1:] if a not in ("--memory_options", "--grad_checkpointing")]
    runs = [(which, []) for which in wanted + ["phase2"]]
    if args.memory_options:
        micro = str(args.micro_batch_size or max(args.batch_size // 4, 1))
        base = _without_option(base, "--micro_batch_size")
        runs = [(which, extra) for which in ("phase1-ours", "phase2")
                for extra in ([], ["--grad_checkpointing"], ["--micro_batch_size", micro])]
    results = []
    for which, extra in runs:
        child = subprocess.run([sys.executable, __file__, *base, *extra, "--only", which],
                               capture_output=True, text=True, check=True)
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    device = resolve_device(args.device)
    report = {"settings": {k: v for k, v in vars(args).items() if k not in ("only", "out", "grad_checkpointing")},
              "machine": {"device": str(device), "cpu": platform.processor() or platform.machine(),
                          "cpu_count": os.cpu_count(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(),
                          "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
              "results": results}
    if len(wanted) == 2 and not args.memory_options:
        ours, official = results[0], results[1]
        report["text_path_speedup"] = {
            "text_forward": official["text_forward_ms_per_step"] / ours["text_forward_ms_per_step"],
            "phase1_step": official["seconds_per_step"] / ours["seconds_per_step"]}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        from utils.io import atomic_write_text

        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
