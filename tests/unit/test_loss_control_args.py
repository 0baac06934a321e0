"""Loss-control flags: checked before any process group starts, one line each; the SFT loss flags refused where
another objective's loss would ignore them."""

from __future__ import annotations

import pytest

from megatron_sft.apps import parse
from megatron_sft.errors import UserError

RUN = ["--train-iters", "3", "--lr", "1e-5", "--seq-length", "64", "--device", "cpu"]


def _parse(tiny_models, app: str, *flags: str):
    model = str(tiny_models["qwen3"])
    return parse(app, ["--load", model, "--data-path", f"{model}/config.json", *RUN, *flags])


def test_the_flags_reach_the_config(tiny_models):
    cfg = _parse(tiny_models, "finetune", "--loss-normalization", "sample", "--loss-turns", "last",
                 "--neftune-noise-alpha", "5")
    assert (cfg.data.loss_normalization, cfg.data.loss_turns, cfg.training.neftune_noise_alpha) == ("sample", "last", 5.0)
    defaults = _parse(tiny_models, "finetune")
    assert (defaults.data.loss_normalization, defaults.data.loss_turns, defaults.training.neftune_noise_alpha) == (
        "token", "all", None)


@pytest.mark.parametrize("app,flags,message", [
    ("finetune", ["--neftune-noise-alpha", "0"], "--neftune-noise-alpha 0.0 must be positive"),
    ("dpo", ["--loss-normalization", "sample"], "shape the SFT loss; DPO's is per pair"),
    ("dpo", ["--loss-turns", "last"], "shape the SFT loss; DPO's is per pair"),
    ("dpo", ["--neftune-noise-alpha", "5"], "NEFTune is for fine-tuning"),
    ("finetune", ["--loss-normalization", "sample", "--export-kd-teacher-load", "MODEL"],
     "distillation's loss is the mean over supervised tokens"),
])
def test_what_does_not_apply_is_refused(tiny_models, app, flags, message):
    flags = [str(tiny_models["qwen3"]) if f == "MODEL" else f for f in flags]
    with pytest.raises(UserError, match=message):
        _parse(tiny_models, app, *flags)


def test_finetune_sh_variables_and_sft_keywords(tmp_path):
    from megatron_sft.api import _flags, _sft_keywords
    from megatron_sft.launch.scripts import _loss_control
    from megatron_sft.launch.settings import Settings

    env = {"LOSS_NORMALIZATION": "sample", "LOSS_TURNS": "last", "NEFTUNE_NOISE_ALPHA": "5"}
    assert _loss_control(Settings(env, {})) == ["--loss-normalization", "sample", "--loss-turns", "last",
                                                 "--neftune-noise-alpha", "5"]
    assert _loss_control(Settings({}, {})) == []
    o = _sft_keywords("/m", "d.jsonl", str(tmp_path / "out"), loss_normalization="sample", neftune_noise_alpha=5)
    flags = _flags(o, 2048)
    assert flags[flags.index("--loss-normalization") + 1] == "sample"
    assert flags[flags.index("--neftune-noise-alpha") + 1] == "5"
    assert "--loss-turns" not in flags
