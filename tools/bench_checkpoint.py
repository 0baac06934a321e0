"""What the self-checking, atomic save costs, in one run: the Qwen3-0.6B shape, bf16 training state.

The state is that of a bf16 training run of Qwen3-0.6B's exact tensor shapes (random values): bf16 weights plus
Adam's fp32 main copy and two moments, 14 bytes a parameter (about 8.4 GB). Three saves and two loads of it:

  plain      dist_checkpointing.save into iter_N/ and the tracker: what a save was before manifests
  manifest   megatron_sft's save (staging dir, checksum manifest, rename, tracker) with fsync turned off
  full       megatron_sft's save as it runs: the same plus fsync of every file and directory
  load       dist_checkpointing.load of the plain save, against the deep-checked load (sizes + checksums)

Prints the best seconds of --rounds interleaved repetitions and the ratios to plain. fsync waits for the disk; the
plain save only fills the page cache, so the full ratio says what durability costs on this disk, the manifest ratio
what the checksums cost.

    python tools/bench_checkpoint.py [--workdir DIR] [--scale 0.25]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

QWEN3_0_6B = json.loads(
    (Path(__file__).resolve().parents[1] / "tests" / "data" / "hf_model_configs.json").read_text()
)["Qwen/Qwen3-0.6B"]


def state_shapes(scale: float) -> dict[str, tuple[int, ...]]:
    """The HF tensor shapes of Qwen3-0.6B (tied embedding once); `scale` < 1 keeps that share of the layers."""
    c = QWEN3_0_6B
    h, heads, groups, d, ffn = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], \
        c["intermediate_size"]
    shapes = {"embed": (c["vocab_size"], h), "final_norm": (h,)}
    for i in range(max(1, round(c["num_hidden_layers"] * scale))):
        shapes.update({f"l{i}.qkv": ((heads + 2 * groups) * d, h), f"l{i}.proj": (h, heads * d),
                       f"l{i}.fc1": (2 * ffn, h), f"l{i}.fc2": (h, ffn), f"l{i}.norms": (2 * h + 2 * d,)})
    return shapes


def make_state(scale: float) -> tuple[dict, int]:
    import torch
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    state, nbytes = {}, 0
    for name, shape in state_shapes(scale).items():
        for part, dtype in (("param", torch.bfloat16), ("main", torch.float32), ("exp_avg", torch.float32),
                            ("exp_avg_sq", torch.float32)):
            t = torch.randn(shape, dtype=torch.float32).to(dtype)
            state[f"{part}.{name}"] = ShardedTensor.from_rank_offsets(f"{part}.{name}", t, replica_id=0)
            nbytes += t.numel() * t.element_size()
    return state, nbytes


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def drop_page_cache() -> None:
    """So each load reads what the disk holds (root only; a no-op elsewhere)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=None, help="where the checkpoints go (default: a temporary directory)")
    p.add_argument("--scale", type=float, default=1.0, help="share of the 28 layers to keep (1.0: the whole model)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the best of each is reported")
    args = p.parse_args()

    import torch
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    from megatron_sft.checkpointing import integrity, layout
    from megatron_sft.checkpointing.megatron_ckpt import load_sharded, save_checkpoint

    if not torch.cuda.is_available():
        from megatron_sft.runtime import cpu_mode

        cpu_mode.enable()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("gloo", rank=0, world_size=1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_ckpt_"))
    state, nbytes = make_state(args.scale)
    print(f"state: {len(state)} tensors, {nbytes / 1e9:.2f} GB (bf16 weights + fp32 main params + Adam moments)")

    def plain_save(root: Path) -> None:
        ckpt = layout.iteration_dir(root, 1)
        ckpt.mkdir(parents=True)
        dist_checkpointing.save(state, str(ckpt))
        layout.write_run_args(ckpt, {})
        (root / layout.TRACKER).write_text("1")

    def without_fsync(fn) -> None:
        real_fsync = os.fsync
        os.fsync = lambda fd: None
        try:
            fn()
        finally:
            os.fsync = real_fsync

    plain_save(work / "warmup")  # the first save starts dist_checkpointing's helper processes
    shutil.rmtree(work / "warmup")
    saves = {"plain": [], "manifest": [], "full": []}
    for round_ in range(args.rounds):  # interleaved, so a slow spell of the disk hits every variant alike
        for name, fn in (("plain", lambda: plain_save(work / "plain")),
                         ("manifest", lambda: without_fsync(lambda: save_checkpoint(work / "manifest", 1, state, {}))),
                         ("full", lambda: save_checkpoint(work / "full", 1, state, {}))):
            if round_ > 0:
                shutil.rmtree(work / name)
            drop_page_cache()
            saves[name].append(timed(fn))

    def checked_load() -> None:
        integrity._deep_ok.clear()
        ckpt, _ = layout.latest_checkpoint_dir(work / "full", deep=True)
        load_sharded(state, ckpt)

    loads = {"plain": [], "checked": []}
    for _ in range(args.rounds):
        plain_dir = str(layout.iteration_dir(work / "plain", 1))
        for name, fn in (("plain", lambda: dist_checkpointing.load(state, plain_dir)), ("checked", checked_load)):
            drop_page_cache()
            loads[name].append(timed(fn))
    plain, manifest, full = (min(saves[k]) for k in ("plain", "manifest", "full"))
    load_plain, load_checked = min(loads["plain"]), min(loads["checked"])
    print(f"best of {args.rounds} interleaved rounds")
    print(f"save: plain {plain:.1f} s | manifest (no fsync) {manifest:.1f} s = {manifest / plain:.2f}x | "
          f"manifest + fsync {full:.1f} s = {full / plain:.2f}x")
    print(f"load: plain {load_plain:.1f} s | manifest checked (sizes + checksums) {load_checked:.1f} s = "
          f"{load_checked / load_plain:.2f}x")
    dist.destroy_process_group()
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":  # dist_checkpointing's saver process re-imports this file
    main()
