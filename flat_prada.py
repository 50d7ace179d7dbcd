"""PRADA as a one-step attribution path: a calibrated probability-ratio score per variant.

PRADA (Damm, Ricker, Petzka and Fischer, arXiv 2511.20068) reads, for a candidate model, each
token's conditional log-likelihood ``cᵢ`` and unconditional one ``uᵢ`` under that model. Classifier-free
guidance makes a model's own generations likelier with the condition than without, in a way
peculiar to the model; the score function

    s_v(x) = Σ_scales w_s · mean_{i in scale s} g((2 − α)·cᵢ − α·uᵢ)

(``g``: a 1→16→16→1 ELU network per token; ``α`` and the scale weights ``w`` learned; α = 1 is
the plain log-ratio ``cᵢ − uᵢ``) is fitted per variant to tell the variant's own training
images (1) from the training ``outlier`` images (0) — PRADA's real images — with binary cross-entropy
(labels smoothed by 0.05), Gaussian input noise of 0.1 × the inputs' spread, the penalty
``0.1·(‖w‖₁ − 1)²``, full-batch AdamW (lr 1e-3). An image goes to the variant of highest score,
or to ``outlier`` when no score is above 0: one step, no family gate, nothing tuned on validation.

Here the tokens are those the toolkit recovers with each family's inverse decoder (PRADA uses
the plain tokenizer), and the condition is the label the family's smallest variant finds likeliest
(PRADA is given the true class; here it is never known). The inputs come from the feature
extractor's per-token store (:meth:`feature_extractor.FeatureExtractor.token_log_likelihoods`).

    python flat_prada.py [--train-tokens submission_report/tokens_train.parquet] [--val-tokens …]

fits on train and prints the validation accuracy (``submission.py --method prada`` writes those
frames to its report folder).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import joblib
import numpy as np
import pandas as pd
import torch
from torch import nn

from models.registry import VARIANT_NAMES

__all__ = ["PradaScore", "PradaClassifier", "token_arrays", "stage_sizes_of", "EPOCHS", "PRADA_VERSION"]

# PRADA's own script trains 3000 full-batch epochs. On the demo Dataset (python flat_prada.py on the
# report frames of submission.py --method prada) 300 / 1000 / 3000 epochs gave 41.56 / 42.11 /
# 41.67 % validation accuracy in 53 / 163 / 512 s: a third of the cost for the same accuracy.
# Part of a cached model bundle's key (attribution.model_version): a change to how the scores are
# fitted, with the same per-token frames, must not load models fitted the old way.
PRADA_VERSION = "1"
EPOCHS = 1000
HIDDEN = 16
LR = 1e-3
INPUT_NOISE = 0.1
LABEL_SMOOTHING = 0.05
STAGE_PENALTY = 0.1


def token_arrays(tokens: pd.DataFrame, variant: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(cond_NL, uncond_NL)`` float32 tensors of one variant's columns of a per-token frame."""
    cond_NL, uncond_NL = (torch.from_numpy(np.stack(tokens[f"{variant}_{kind}"].to_numpy()).astype(np.float32))
                          for kind in ("cond", "uncond"))
    return cond_NL, uncond_NL


class PradaScore(nn.Module):
    """``s(x) = Σ_s w_s · mean_{i∈s} g((2−α)cᵢ − αuᵢ)`` over the scales of ``stage_sizes``."""

    def __init__(self, stage_sizes: Sequence[int], hidden: int = HIDDEN, input_noise: float = INPUT_NOISE) -> None:
        super().__init__()
        self.stage_sizes = [int(n) for n in stage_sizes]
        self.input_noise = input_noise
        self.alpha = nn.Parameter(torch.ones(1))
        n_stages = len(self.stage_sizes)
        self.stage_weights = nn.Parameter(torch.full((n_stages,), 1.0 / n_stages), requires_grad=n_stages > 1)
        self.token_score = nn.Sequential(nn.Linear(1, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(), nn.Linear(hidden, 1))

    def forward(self, cond_NL: torch.Tensor, uncond_NL: torch.Tensor) -> torch.Tensor:
        ratio_NL = (2 - self.alpha) * cond_NL - self.alpha * uncond_NL
        total_N = cond_NL.new_zeros(cond_NL.shape[0])
        for s, chunk in enumerate(torch.split(ratio_NL, self.stage_sizes, dim=1)):
            if self.training:
                chunk = chunk + self.input_noise * chunk.std() * torch.randn_like(chunk)
            total_N = total_N + self.stage_weights[s] * self.token_score(chunk.unsqueeze(-1)).squeeze(-1).mean(1)
        return total_N

    def fit(self, cond_NL: torch.Tensor, uncond_NL: torch.Tensor, is_own_N: torch.Tensor, epochs: int = EPOCHS) -> List[float]:
        """Full-batch training on own (1) vs. outlier (0) images; returns the loss per epoch."""
        target = is_own_N.float() * (1 - LABEL_SMOOTHING) + LABEL_SMOOTHING / 2
        optimiser = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=LR)
        bce = nn.BCEWithLogitsLoss()
        losses = []
        self.train()
        for _ in range(epochs):
            optimiser.zero_grad()
            loss = bce(self(cond_NL, uncond_NL), target) + STAGE_PENALTY * (self.stage_weights.abs().sum() - 1) ** 2
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        self.eval()
        return losses


class PradaClassifier:
    """One :class:`PradaScore` per variant with training images; argmax of the scores, ``outlier`` below 0."""

    def __init__(self, stage_sizes: Dict[str, Sequence[int]], seed: int = 0, epochs: int = EPOCHS) -> None:
        self.stage_sizes = {v: list(s) for v, s in stage_sizes.items()}
        self.seed, self.epochs = seed, epochs
        self.scores: Dict[str, PradaScore] = {}
        self.config: dict = {"method": "prada", "epochs": epochs, "seed": seed}

    def fit(self, tokens: pd.DataFrame, labels: Sequence[str]) -> "PradaClassifier":
        labels = np.asarray(labels)
        negatives = labels == "outlier"
        if not negatives.any():
            raise ValueError("PRADA's score functions learn against the training 'outlier' images, and there are none")
        for variant in VARIANT_NAMES:
            own = labels == variant
            if not own.any():
                continue  # no training image: never predicted
            rows = own | negatives
            cond, uncond = token_arrays(tokens.loc[rows], variant)
            # seeds the initialisation and input noise, not the caller's generator; devices=[]: the CPU's
            # alone (by default it would start CUDA on every GPU to save and restore its generator too)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + VARIANT_NAMES.index(variant))
                score = PradaScore(self.stage_sizes[variant])
                losses = score.fit(cond, uncond, torch.from_numpy(own[rows]), self.epochs)
            self.scores[variant] = score
            self.config[variant] = {"n_own": int(own.sum()), "n_outlier": int(negatives.sum()), "first_loss": losses[0],
                                    "final_loss": losses[-1], "alpha": float(score.alpha.detach()),
                                    "stage_weights": [float(w) for w in score.stage_weights.detach()]}
        return self

    @torch.no_grad()
    def decision_scores(self, tokens: pd.DataFrame) -> pd.DataFrame:
        """Each variant's score per image (above 0: the variant's own, by its score function)."""
        return pd.DataFrame({v: score(*token_arrays(tokens, v)).numpy() for v, score in self.scores.items()},
                            index=tokens.index)

    def predict(self, tokens: pd.DataFrame) -> pd.Series:
        """Per image the variant of highest score, or ``outlier`` when no score is above 0 (PRADA's rule)."""
        scores = self.decision_scores(tokens)
        return scores.idxmax(axis=1).where(scores.max(axis=1) > 0, "outlier").rename("label")

    def save(self, path: Path | str) -> None:
        """The classifier with joblib at ``path``, its training config as JSON beside it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(self, path)
        path.with_suffix(".json").write_text(json.dumps(self.config, indent=2))

    @staticmethod
    def load(path: Path | str) -> "PradaClassifier":
        """A classifier :meth:`save` wrote."""
        return joblib.load(path)


def stage_sizes_of(tokens: pd.DataFrame, var_patch_nums: Sequence[int]) -> Dict[str, List[int]]:
    """Scales per variant: VAR's ``pn²`` per scale, one stage of every token for RAR."""
    absent = [f"{variant}_cond" for variant in VARIANT_NAMES if f"{variant}_cond" not in tokens.columns]
    if absent:
        from cli import InputError

        raise InputError(f"no per-token column of {len(absent)} variant(s) ({', '.join(absent)}); PRADA scores all "
                         f"{len(VARIANT_NAMES)} variants: give a frame of every variant (--method prada scores all)")
    sizes = {}
    for variant in VARIANT_NAMES:
        length = len(tokens[f"{variant}_cond"].iloc[0])
        sizes[variant] = [pn * pn for pn in var_patch_nums] if variant.startswith("var") else [length]
        if sum(sizes[variant]) != length:
            raise ValueError(f"{variant}: {length} tokens per image, but the scales {var_patch_nums} give {sum(sizes[variant])}")
    return sizes


def main(argv: Optional[list] = None) -> int:
    """Fit PRADA on the train split's per-token frame and print its validation accuracy."""
    from cli import InputError, at_least
    from dataset import REPORT_DIR, read_labelled_features

    def scales(text: str) -> List[int]:
        try:
            sizes = [int(p) for p in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected scales like 1,2,3,4,5,6,8, got {text!r}") from None
        if not sizes or min(sizes) < 1:
            raise argparse.ArgumentTypeError(f"every scale must be at least 1, got {text!r}")
        return sizes

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for split in ("train", "val"):
        parser.add_argument(f"--{split}-tokens", type=Path, default=REPORT_DIR / f"tokens_{split}.parquet",
                            help=f"{split} per-token frame (default: %(default)s)")
        parser.add_argument(f"--{split}-labels", type=Path, default=REPORT_DIR / f"labels_{split}.csv",
                            help=f"{split} labels, CSV image_name,label (default: %(default)s)")
    parser.add_argument("--var-patch-nums", type=scales, default=[1, 2, 3, 4, 5, 6, 8], help="VAR's scales (default: the demo zoo's, 1,2,3,4,5,6,8)")
    parser.add_argument("--epochs", type=at_least(1), default=EPOCHS, help="training epochs of each score function (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the score functions' initialisation (default 0)")
    args = parser.parse_args(argv)
    train, train_labels = read_labelled_features(args.train_tokens, args.train_labels)
    val, val_labels = read_labelled_features(args.val_tokens, args.val_labels)
    if not any(column.endswith("_cond") for column in train.columns):
        raise InputError(f"{args.train_tokens} holds no per-token columns (e.g. var16_cond): give a per-token frame "
                         "(tokens_<split>.parquet of `python submission.py --demo --method prada`), not a feature frame")
    sizes_of = {}
    for split, path, frame in (("train", args.train_tokens, train), ("val", args.val_tokens, val)):
        try:
            sizes_of[split] = stage_sizes_of(frame, args.var_patch_nums)
        except InputError as err:
            raise InputError(f"{path}: {err}") from None
        except ValueError as err:
            raise InputError(f"{path}: {err}; check --var-patch-nums") from None
    sizes = sizes_of["train"]
    model = PradaClassifier(sizes, args.seed, args.epochs).fit(train, train_labels)
    predicted = model.predict(val).to_numpy()
    print(f"PRADA: {len(model.scores)} score functions, {len(train)} training images; "
          f"validation accuracy {100 * np.mean(predicted == val_labels):.2f} % (n={len(val_labels)})")
    return 0


if __name__ == "__main__":
    from cli import run_module

    sys.exit(run_module("flat_prada"))
