"""Benchmark HF -> Megatron conversion against the disk speed floor, in one run.

Makes a bf16 checkpoint of Qwen3-0.6B's exact shape (random weights, written locally), then:
  time ratio   = (import + dist-checkpoint save, in a fresh process)
                 / (read the same safetensors + write as many bytes with fsync)
  memory ratio = peak RSS of the conversion process / checkpoint size
Goal: time ratio <= 2, memory ratio < 2.

    python tools/bench_convert.py [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QWEN3_0_6B = json.loads(
    (Path(__file__).resolve().parents[1] / "tests" / "data" / "hf_model_configs.json").read_text()
)["Qwen/Qwen3-0.6B"]


def make_checkpoint(out: Path) -> int:
    """Qwen3-0.6B-shaped bf16 safetensors + config/tokenizer-free HF dir; returns bytes of weights."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(**{k: v for k, v in QWEN3_0_6B.items() if k != "architectures"}, dtype="bfloat16")
    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in Qwen3ForCausalLM(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    tensors = {k: (torch.randn(s, generator=gen) * 0.02).to(torch.bfloat16) for k, (s, _) in shapes.items()
               if k != "lm_head.weight"}  # tied: HF does not store lm_head
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg.architectures = ["Qwen3ForCausalLM"]
    cfg.save_pretrained(out)
    return (out / "model.safetensors").stat().st_size


def disk_floor(src: Path, scratch: Path) -> float:
    """Seconds to read the safetensors into memory and write the same bytes with fsync."""
    from safetensors.torch import load_file

    t0 = time.perf_counter()
    tensors = load_file(str(src / "model.safetensors"))
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    chunk = b"\0" * (64 << 20)
    with open(scratch, "wb") as f:
        for _ in range(nbytes // len(chunk)):
            f.write(chunk)
        f.write(b"\0" * (nbytes % len(chunk)))
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def convert_in_child(src: Path, dst: Path) -> tuple[float, float, int]:
    """Run tools/convert.py in a fresh process.

    Returns (wall seconds of the process, seconds of build+import+save as the tool logs them,
    peak RSS bytes of the process)."""
    cmd = [sys.executable, str(Path(__file__).with_name("convert.py")), "--load", str(src), "--save", str(dst),
           "--bf16", "--device", "cpu"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    seconds = time.perf_counter() - t0
    match = re.search(r"build\+import ([0-9.]+) s, save ([0-9.]+) s", proc.stdout)
    work = float(match.group(1)) + float(match.group(2))
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak >= before
    return seconds, work, peak * 1024


def import_overhead() -> float:
    """Seconds a fresh process spends importing the stack (reported, and not subtracted)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import megatron.core, modelopt.torch.export, transformers"], check=True,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    cli = parser.parse_args()
    work = cli.workdir or Path(tempfile.mkdtemp(prefix="bench_convert_"))
    src, dst = work / "hf", work / "mcore"
    size = make_checkpoint(src)
    floor = disk_floor(src, work / "floor.bin")
    startup = import_overhead()
    seconds, work, peak = convert_in_child(src, dst)
    print(f"checkpoint: Qwen3-0.6B shape, bf16, {size / 2**30:.2f} GiB")
    print(f"disk floor (read + write with fsync): {floor:.1f} s")
    print(f"convert HF->Megatron, import + save: {work:.1f} s; whole process {seconds:.1f} s "
          f"(python imports alone take {startup:.1f} s)")
    print(f"time ratio (import + save / floor): {work / floor:.2f}  (goal <= 2); "
          f"whole process / floor: {seconds / floor:.2f}")
    print(f"peak RSS: {peak / 2**30:.2f} GiB; memory ratio: {peak / size:.2f}  (goal < 2)")
    if not cli.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
