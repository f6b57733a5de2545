"""The offline miniature: DeFT end to end on Fashion-MNIST with a tiny CLIP we pre-train ourselves.

    python tools/demo.py            (or: make demo; the shifted miniature)
    python tools/demo.py --variant in_distribution      (another named miniature of tools/miniature_variants.py)

0. print the miniature's regime, measured on clean labels (results/miniature/regime.json): zero-shot,
   linear probe, clean PEFT and clean full fine-tuning, i.e. what there is to gain over zero-shot;
1. pre-train a tiny CLIP contrastively on 20,000 of the 30,000 Fashion-MNIST training images kept for
   pre-training (cached);
2. DeFT phase 1 on a disjoint downstream part (shifted: rendered as 10 px thumbnails on grey) with 40%
   symmetric label noise;
3. CLIP label-match on the same noisy labels (zero-shot prediction == given label);
4. DeFT phase 2: full fine-tuning on the clean subset;
5. the same fine-tuning on every noisy label (the CE baseline), for comparison;
6. the regime line again, above a table of detection precision / recall / F1 and one of test accuracy.

What it shows: the method's mechanics on real images and real labels (dual prompts separate clean
from noisy labels better or worse than label-match; phase 2 profits from the cleaner subset). What it
does not show: the paper's numbers, which need CLIP ViT-B/16 weights and the real datasets on a GPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import main_baseline  # noqa: E402
import main_phase1  # noqa: E402
import main_phase2  # noqa: E402
from tools.miniature_variants import VARIANTS, get_variant, read_regime, regime_line  # noqa: E402
from tools.pretrain_tiny_clip import pretrain_cached  # noqa: E402
from utils.io import atomic_write_json  # noqa: E402

# The miniature `make demo` runs: the shifted one, whose regime (results/miniature/regime.json) leaves a
# clean full fine-tuning about 27 points above zero-shot, as in the paper's world.
DEMO_VARIANT = "shifted"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default=DEMO_VARIANT, choices=sorted(VARIANTS),
                        help=f"which miniature (tools/miniature_variants.py; default {DEMO_VARIANT})")
    parser.add_argument("--noise_ratio", default="0.4")
    parser.add_argument("--opts", nargs="*", default=[], help="extra --opts for both phases")
    args = parser.parse_args()
    started = time.time()
    flags = ["--noise_mode", "sym", "--noise_ratio", args.noise_ratio, "--overwrite"]
    extra = ["--opts", *args.opts] if args.opts else []

    variant = get_variant(args.variant)
    peft_cfg, fft_cfg = variant.peft, variant.fft
    peft = variant.config()
    regime = read_regime(variant)
    regime_text = regime_line(regime) if regime is not None else (
        f"the {variant.name} miniature's regime: not measured (python tools/miniature_regime.py "
        f"--variant {variant.name})")
    print(f"== 0. {regime_text}", flush=True)
    print(f"== 1. pre-training the tiny CLIP (cached after the first run); the {variant.name} miniature")
    pretrain_cached(variant.settings(peft), variant.checkpoint(peft))
    print("== 2. DeFT phase 1: noisy-label detection")
    phase1 = main_phase1.main(["--cfg", str(peft_cfg), *flags, *extra])
    print("== 3. CLIP label-match")
    match = main_baseline.main(["--cfg", str(peft_cfg), *flags, "--lnl_methods", "LabelMatch",
                                "--opts", "label_match_templates=miniature", *args.opts])
    print("== 4. DeFT phase 2: fine-tuning on the clean subset")
    phase2 = main_phase2.main(["--cfg", str(fft_cfg), *flags, *extra])
    print("== 5. the same fine-tuning on all noisy labels (CE baseline)")
    noisy_ce = main_baseline.main(["--cfg", str(fft_cfg), *flags, "--lnl_methods", "CE", *extra])

    rows = [("noise-free fraction (keep all)", 1 - phase1["noise"]["actual_rate"], 1.0, None),
            ("CLIP label-match", match["mask_precision"], match["mask_recall"], match["mask_f1"]),
            ("DeFT (dual prompts)", phase1["mask_precision"], phase1["mask_recall"], phase1["mask_f1"])]
    print(f"\n{regime_text[0].upper()}{regime_text[1:]}")
    print(f"\nFashion-MNIST miniature ({variant.name}), sym noise {args.noise_ratio} "
          f"(actual {phase1['noise']['actual_rate']:.3f}), {phase1['num_samples']} training images")
    print(f"{'detector':34s} {'precision':>9s} {'recall':>7s} {'F1':>6s}")
    for name, p, r, f1 in rows:
        print(f"{name:34s} {100 * p:9.2f} {100 * r:7.2f} {'' if f1 is None else f'{100 * f1:6.2f}'}")
    print(f"\n{'classifier':34s} {'test acc':>9s}")
    print(f"{'tiny CLIP zero-shot':34s} {match['zero_shot_test_acc']:9.2f}")
    print(f"{'DeFT phase 1 (positive prompts)':34s} {phase1['last_test_acc']:9.2f}")
    print(f"{'FFT on all noisy labels (CE)':34s} {noisy_ce['last_test_acc']:9.2f}  "
          f"(best {noisy_ce['best_test_acc']:.2f})")
    print(f"{'DeFT phase 2 (FFT on clean subset)':34s} {phase2['last_test_acc']:9.2f}  "
          f"(best {phase2['best_test_acc']:.2f})")
    print(f"\n{time.time() - started:.0f} s; runs under {peft.output_dir}/{{phase1,baseline_labelmatch,phase2,baseline_ce}}/fashion_mnist/")
    atomic_write_json(str(ROOT / "output" / "demo" / "summary.json"),
                      {"label_match": match, "phase1": phase1, "phase2": phase2, "noisy_ce": noisy_ce,
                       "seconds": time.time() - started})


if __name__ == "__main__":
    main()
