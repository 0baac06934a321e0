"""CheckpointDir, the one view of a checkpoint directory: what it reports, and a damaged part as one line."""

from __future__ import annotations

import json

import pytest

from megatron_sft.checkpointing import names
from megatron_sft.checkpointing.layout import CheckpointDir
from megatron_sft.errors import UserError


def test_a_training_checkpoint_reads_back_what_was_written(tmp_path):
    (tmp_path / names.RUN_ARGS).write_text(json.dumps({"args": {"tensor_model_parallel_size": 2,
                                                                 "pipeline_model_parallel_size": 2}}))
    (tmp_path / names.TRAIN_STATE).write_text(json.dumps({"iteration": 3, "layout": {"tp": 2, "pp": 2, "dp": 1}}))
    view = CheckpointDir(tmp_path)
    assert view.is_training and not view.is_quantized and view.lora_record() is None and view.quant_record() == {}
    assert view.saved_layout() == {"tp": 2, "pp": 2, "dp": 1, "cp": 1}  # cp 1: saved before CP existed
    assert view.model_layout() == {"tp": 2, "pp": 2, "ep": 1, "etp": 2, "vp_layers": None}
    assert view.hf == tmp_path / names.HF_DIR and view.hf_assets == tmp_path / names.HF_ASSETS


@pytest.mark.parametrize(("name", "read"), [(names.RUN_ARGS, "run_args"), (names.TRAIN_STATE, "train_state"),
                                            (names.LORA_RECORD, "lora_record"), (names.QUANT_RECORD, "quant_record")])
def test_a_damaged_part_is_one_line_naming_its_file(tmp_path, name, read):
    (tmp_path / name).write_text('{"args": {"tensor')  # cut short, as by a full disk
    with pytest.raises(UserError) as caught:
        getattr(CheckpointDir(tmp_path), read)()
    assert str(tmp_path / name) in str(caught.value) and "\n" not in str(caught.value)


def test_run_args_without_its_args_is_refused(tmp_path):
    (tmp_path / names.RUN_ARGS).write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(UserError, match="expected"):
        CheckpointDir(tmp_path).run_args()
