"""Flags of preference training (the dpo app): the loss and the reference model. The data are preference pairs
(data/preference.py): the same --data-path, --split and cache flags as fine-tuning."""

from __future__ import annotations

from argparse import ArgumentParser

from megatron_sft.config import RunConfig
from megatron_sft.errors import UserError


def add_dpo_args(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("preference training (DPO)")
    g.add_argument("--dpo-loss-type", choices=["sigmoid", "ipo", "hinge"], default="sigmoid",
                   help="sigmoid (DPO), ipo or hinge; TRL's definitions")
    g.add_argument("--dpo-beta", type=float, default=0.1, help="how far from the reference the policy may move")
    g.add_argument("--dpo-label-smoothing", type=float, default=0.0,
                   help="sigmoid only: the share of pairs assumed mislabelled (conservative DPO), in [0, 0.5)")
    g.add_argument("--dpo-sft-weight", type=float, default=0.0,
                   help="RPO: add this times the chosen responses' mean token NLL to the loss")
    g.add_argument("--ref-load", default=None,
                   help="the reference model (a Hugging Face directory or Megatron checkpoint); default: the model "
                   "the run starts from (--load)")
    parser.set_defaults(preference=True)  # the data are preference pairs


def check_dpo_args(cfg: RunConfig) -> None:
    d = cfg.dpo
    if d.dpo_beta <= 0:
        raise UserError(f"--dpo-beta {d.dpo_beta} must be positive")
    if not 0.0 <= d.dpo_label_smoothing < 0.5:
        raise UserError(f"--dpo-label-smoothing {d.dpo_label_smoothing} must be in [0, 0.5)")
    if d.dpo_label_smoothing and d.dpo_loss_type != "sigmoid":
        raise UserError(f"--dpo-label-smoothing applies to --dpo-loss-type sigmoid, not {d.dpo_loss_type}")
    if d.dpo_sft_weight < 0:
        raise UserError(f"--dpo-sft-weight {d.dpo_sft_weight} must be 0 or more")
    if cfg.data.per_split:
        raise UserError("dpo reads its pairs from --data-path (with --split); --train/valid/test-data-path are not "
                        "supported yet")
