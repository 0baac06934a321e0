"""`from megatron_sft import sft`: the Python entry point, as Training Hub users call it."""

from __future__ import annotations

import json
import re

import pytest

from tests.distributed.test_training import write_reversal_data

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


@pytest.mark.parametrize("nproc", [1, 2])
def test_sft_trains_two_epochs(tiny_models, tmp_path, capsys, nproc):
    from megatron_sft import sft

    data = write_reversal_data(tmp_path / "data.jsonl", 48, seed=3)
    # at 2 processes, two validation files (Megatron-LM's per-split form): each reported by its name
    valid = [write_reversal_data(tmp_path / f"{n}.jsonl", 6, seed=s) for n, s in (("va", 4), ("vb", 5))]
    save = tmp_path / "ckpt"
    result = sft(model_path=str(tiny_models["qwen3"]), data_path=str(data), ckpt_output_dir=str(save),
                 num_epochs=2, effective_batch_size=8, learning_rate=3e-3, max_seq_len=64, max_tokens_per_gpu=128,
                 nproc_per_node=nproc, data_cache_dir=str(tmp_path / "cache"), extra_args=["--log-interval", "1"],
                 save_hf=nproc == 2, valid_data_path=[str(v) for v in valid] if nproc == 2 else None)
    out = capsys.readouterr().out

    # the checkpoint: the last iteration is the one the tracker names
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == str(result.iterations)
    assert (save / f"iter_{result.iterations:07d}" / "run_args.json").is_file()
    # two passes over the training split, as the run itself counted them in training.log
    log = (save / "training.log").read_text()
    epochs = float(re.search(r"samples consumed \(([\d.]+) epochs\)", log).group(1))
    packs = int(re.search(r"--train-epochs 2: (\d+) packed sequences per epoch, global batch (\d+)", log).group(1))
    gbs = int(re.search(r"global batch (\d+) ->", log).group(1))
    assert 2.0 <= epochs < 2.0 + gbs / packs, (epochs, packs, gbs)
    assert "train epoch 1 starts" in log
    # conversations per step: effective_batch_size 8, rounded to whole packs (a multiple of DP)
    per_step = float(re.search(r"~([\d.]+) conversations per step", out).group(1))
    per_pack = float(re.search(r"([\d.]+) conversations per packed sequence", out).group(1))
    assert gbs % nproc == 0 and abs(per_step - 8) <= per_pack * nproc / 2 + 1e-6, (per_step, per_pack, gbs)
    # the loss fell
    train = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in train if r["kind"] == "train"]
    assert len(losses) == result.iterations and losses[-1] < losses[0], losses
    assert result.final_loss == losses[-1]
    # save_hf (at 2 processes): the Hugging Face directory of the last checkpoint, named by the result and the log
    if nproc == 2:
        from transformers import AutoModelForCausalLM

        assert re.search(r"validation at iteration \d+ \| loss [\d.]+ \| perplexity [\d.]+ \| loss/va [\d.]+ \| "
                         r"ppl/va [\d.]+ \| loss/vb [\d.]+", log), log[-2000:]

        assert result.hf_path == str(save / f"iter_{result.iterations:07d}" / "hf")
        assert f"| Hugging Face: {result.hf_path}" in log
        assert AutoModelForCausalLM.from_pretrained(result.hf_path).config.num_hidden_layers > 0
    else:
        assert result.hf_path is None


def test_sft_raises_the_one_line_error(tiny_models, tmp_path):
    from megatron_sft import SFTError, sft

    with pytest.raises(SFTError, match="no-such.jsonl"):
        sft(model_path=str(tiny_models["qwen3"]), data_path=str(tmp_path / "no-such.jsonl"),
            ckpt_output_dir=str(tmp_path / "ckpt"), max_seq_len=64, quiet=True)
    model = str(tiny_models["qwen3"])  # saving over the model it starts from: refused as from finetune.py
    with pytest.raises(SFTError, match="is the model this run starts from"):
        sft(model_path=model, data_path="x.jsonl", ckpt_output_dir=model, max_seq_len=64, quiet=True)
    with pytest.raises(SFTError, match="max_tokens_per_gpu 32 is below max_seq_len 64"):
        sft(model_path=str(tiny_models["qwen3"]), data_path="x.jsonl", ckpt_output_dir=str(tmp_path / "c"),
            max_seq_len=64, max_tokens_per_gpu=32)
    # effective_batch_size reads the data before the launch: a flag problem found there is the same SFTError
    with pytest.raises(SFTError, match="not --train-iters and --train-epochs"):
        sft(model_path=model, data_path=str(tiny_models["qwen3"] / "config.json"), ckpt_output_dir=str(tmp_path / "d"),
            max_seq_len=64, effective_batch_size=8, extra_args=["--train-iters", "5"], quiet=True)


def test_lora_sft_trains_adapters_only(tiny_models, tmp_path):
    from megatron_sft import SFTError, lora_sft

    data = write_reversal_data(tmp_path / "data.jsonl", 32, seed=4)
    save = tmp_path / "lora"
    result = lora_sft(model_path=str(tiny_models["qwen3"]), data_path=str(data), ckpt_output_dir=str(save),
                      lora_r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], max_seq_len=64,
                      data_cache_dir=str(tmp_path / "cache"), quiet=True, extra_args=["--log-interval", "1"])
    last = save / f"iter_{result.iterations:07d}"
    record = json.loads((last / "lora.json").read_text())
    assert record["rank"] == 4 and record["targets"] == ["linear_qkv", "linear_fc2"]
    assert "trainable parameters of" in (save / "training.log").read_text()
    # called again, the finished run trains nothing and changes no byte of its checkpoint (tokenizer included)
    files = {p: p.read_bytes() for p in sorted(last.rglob("*")) if p.is_file()}
    assert any("hf_assets/tokenizer" in str(p) for p in files)
    again = lora_sft(model_path=str(tiny_models["qwen3"]), data_path=str(data), ckpt_output_dir=str(save),
                     lora_r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], max_seq_len=64,
                     data_cache_dir=str(tmp_path / "cache"), quiet=True, extra_args=["--log-interval", "1"])
    assert again.iterations == result.iterations
    assert "nothing to train" in (save / "training.log").read_text()
    assert {p: p.read_bytes() for p in sorted(last.rglob("*")) if p.is_file()} == files
    with pytest.raises(SFTError, match="'lm_head' is not an attention or MLP projection"):
        lora_sft(model_path=str(tiny_models["qwen3"]), data_path=str(data), ckpt_output_dir=str(tmp_path / "x"),
                 target_modules=["lm_head"])
