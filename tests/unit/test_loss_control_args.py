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


def _per_split(tiny_models, app: str, *flags: str):
    model = str(tiny_models["qwen3"])
    return parse(app, ["--load", model, "--train-data-path", f"{model}/config.json", *RUN, *flags])


def test_multiple_validation_sets_as_megatron_lm_checks_them(tiny_models):
    """Several --valid-data-path files, no weights among them (Megatron-LM's rules); not for dpo or distillation."""
    model = str(tiny_models["qwen3"])
    a, b = f"{model}/config.json", f"{model}/generation_config.json"
    cfg = _per_split(tiny_models, "finetune", "--valid-data-path", a, b, "--multiple-validation-sets")
    assert cfg.data.multiple_validation_sets and cfg.data.valid_data_path == [a, b]
    for flags, message in (
        (["--valid-data-path", a], "--multiple-validation-sets needs several validation files"),
        (["--valid-data-path", "0.5", a, "0.5", b], "give the files without weights"),
    ):
        with pytest.raises(UserError, match=message):
            _per_split(tiny_models, "finetune", *flags, "--multiple-validation-sets")
    with pytest.raises(UserError, match="needs several validation files"):
        _parse(tiny_models, "finetune", "--multiple-validation-sets")
    with pytest.raises(UserError, match="--multiple-validation-sets is for finetune runs"):
        _per_split(tiny_models, "dpo", "--valid-data-path", a, b, "--multiple-validation-sets")
    with pytest.raises(UserError, match="distillation validates its --valid-data-path files as one set"):
        _per_split(tiny_models, "finetune", "--valid-data-path", a, b, "--multiple-validation-sets",
                   "--export-kd-teacher-load", model)


def test_finetune_sh_valid_dataset(tmp_path):
    """VALID_DATASET: DATASET becomes --train-data-path, several files are validated each alone; a missing file, or
    data named in MLM_DATA_ARGS too, is refused in one line."""
    from megatron_sft.launch.scripts import _dataset
    from megatron_sft.launch.settings import LaunchError, Settings

    train, easy, hard = (tmp_path / n for n in ("t.jsonl", "easy.jsonl", "hard.jsonl"))
    for f in (train, easy, hard):
        f.write_text("{}\n")
    s = Settings({"DATASET": str(train), "VALID_DATASET": f"{easy} {hard}"}, {})
    assert _dataset(s, "", "", "/w")[:6] == ["--train-data-path", str(train), "--valid-data-path", str(easy),
                                            str(hard), "--multiple-validation-sets"]
    one = _dataset(Settings({"DATASET": str(train), "VALID_DATASET": str(easy)}, {}), "", "", "/w")
    assert "--multiple-validation-sets" not in one and one[:4] == ["--train-data-path", str(train),
                                                                  "--valid-data-path", str(easy)]
    with pytest.raises(LaunchError, match=r"VALID_DATASET: .*nope.jsonl: no such file"):
        _dataset(Settings({"DATASET": str(train), "VALID_DATASET": str(tmp_path / "nope.jsonl")}, {}), "", "", "/w")
    with pytest.raises(LaunchError, match="MLM_DATA_ARGS both name the data"):
        _dataset(Settings({"VALID_DATASET": str(easy)}, {}), f"--data-path {train}", "", "/w")
