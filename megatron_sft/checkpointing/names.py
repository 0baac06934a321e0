"""Every name inside a checkpoint directory this project writes, in one place; this docstring is the layout
docs/checkpoints.md shows (Megatron-LM compatible; tests/unit/test_docs.py keeps the two the same).

    ROOT/                                   --save
      latest_checkpointed_iteration.txt     TRACKER: "release" or the iteration; written last, after the
                                            iteration directory is complete and in place
      training.log                          TRAINING_LOG: what the console showed (rank 0), appended on resume
      metrics.jsonl                         METRICS: a JSON line per logged iteration (loss, lr, grad norm,
                                            tokens/s, epoch, ...) and per validation (loss, perplexity)
      .owner.json                           CLAIM: the run writing here: host, pid, start time (owner.py)
      iter_0000200/ | release/              one checkpoint (ITERATION_DIR % N; RELEASE: weights only); loads at
                                            any TP/PP
        .metadata metadata.json common.pt   DIST_FILES: dist_checkpointing's index, format (DIST_FORMAT) and
                                            common state
        __0_0.distcp ...                    DIST_SHARDS: its sharded tensors, one file per writer
        run_args.json                       RUN_ARGS: every resolved argument, incl. the HF source path
        hf_assets/                          HF_ASSETS: config.json, generation_config.json, the tokenizer and the
                                            chat template used (CHAT_TEMPLATE): the HF source but its weights;
                                            GGUF_SOURCE: what a .gguf --load was dequantized from
        train_state.json                    TRAIN_STATE: iteration, consumed samples, scheduler, layout (training)
        loss_curve.png                      LOSS_CURVE: the losses up to this checkpoint (training)
        lora.json                           LORA_RECORD: the adapters' spec and their base, hashed (LoRA runs)
        modelopt_state/ quantization.json   MODELOPT_STATE, QUANT_RECORD: a quantized model (quantize.sh, QAT)
        hf/                                 HF_DIR: --save-hf's Hugging Face model (or PEFT adapter), with
          merged/ parity.json manifest.json MERGED (LoRA --merge-lora), PARITY, MANIFEST; .hf.saving/ meanwhile
        manifest.json                       MANIFEST: every file's size and CRC32 checksums, written last
      .iter_0000400.saving.<run>/           a save in progress (STAGING): never loaded; a killed run's is removed
                                            by the next run that claims the directory (with any .iter_N.deleting
                                            or .iter_N.replaced: DELETING, REPLACED, a removal or replacement
                                            it did not finish)

A save is written into its staging directory, checksummed, renamed into place and only then named by the
tracker: a crash at any point leaves the previous checkpoint intact and current.
"""

from __future__ import annotations

TRACKER = "latest_checkpointed_iteration.txt"
CLAIM = ".owner.json"
TRAINING_LOG = "training.log"
METRICS = "metrics.jsonl"
RELEASE = "release"
ITERATION_DIR = "iter_%07d"
DIST_FORMAT = "metadata.json"  # dist_checkpointing's format record: a checkpoint written elsewhere has it too
DIST_FILES = (".metadata", DIST_FORMAT, "common.pt")
DIST_SHARDS = "*.distcp"
RUN_ARGS = "run_args.json"
HF_ASSETS = "hf_assets"
CHAT_TEMPLATE = "chat_template.jinja"
TRAIN_STATE = "train_state.json"
LOSS_CURVE = "loss_curve.png"
LORA_RECORD = "lora.json"
MODELOPT_STATE = "modelopt_state"
QUANT_RECORD = "quantization.json"
HF_DIR = "hf"
MERGED = "merged"
PARITY = "parity.json"
MANIFEST = "manifest.json"
GGUF_SOURCE = "gguf_source.json"  # in a dequantized .gguf's Hugging Face directory, so in hf_assets/ too
STAGING = ".saving"  # suffix of staging directories: .iter_N.saving.<run>, .hf.saving
DELETING, REPLACED = ".deleting", ".replaced"  # .iter_N.deleting, .iter_N.replaced: a removal or a replacement


def checkpoint_entries(training: bool, lora: bool = False, quantized: bool = False, save_hf: bool = False) -> set:
    """The top-level names of one checkpoint directory of this kind (DIST_SHARDS as its pattern)."""
    names = {*DIST_FILES, DIST_SHARDS, RUN_ARGS, HF_ASSETS, MANIFEST}
    names |= {TRAIN_STATE, LOSS_CURVE} if training else set()
    names |= {LORA_RECORD} if lora else set()
    names |= {MODELOPT_STATE, QUANT_RECORD} if quantized else set()
    return names | ({HF_DIR} if save_hf else set())
