"""Benchmark the data preparation, as ratios measured in one run.

  1. throughput ratio = end-to-end preparation (read, render, tokenize, mask, pack, write; one process)
                        / raw batched tokenizer throughput on the same rendered texts (goal >= 0.5)
  2. speed-up with 2 worker processes over 1
  3. peak memory while preparing 1M short synthetic conversations with 2 workers (goal < 1 GiB): RSS of
     the main process, of the largest worker, and of all processes together
  4. packing fill: best fit vs plain greedy concatenation vs padding each sample to seq-length

    python tools/bench_data.py [--conversations 20000] [--rss-conversations 1000000] [--family qwen3]

Uses a tiny local tokenizer (megatron_sft.tiny) and synthetic conversations, so it runs offline.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

WORDS = [
    "the",
    "a",
    "of",
    "to",
    "in",
    "and",
    "is",
    "it",
    "that",
    "for",
    "on",
    "with",
    "as",
    "was",
    "at",
    "by",
    "this",
    "have",
    "from",
    "or",
    "one",
    "had",
    "not",
    "but",
    "what",
    "all",
    "were",
    "when",
    "we",
    "there",
    "can",
    "an",
    "your",
    "which",
    "their",
    "said",
    "if",
    "do",
    "will",
    "each",
    "about",
    "how",
    "up",
    "out",
    "them",
    "then",
    "she",
    "many",
    "some",
    "so",
    "weather",
    "city",
    "paris",
    "today",
    "answer",
    "question",
    "python",
    "code",
    "data",
    "model",
    "train",
    "reason",
    "think",
    "plan",
    "step",
]


def conversation(rng: random.Random, short: bool) -> dict:
    def text(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."

    if short:
        return {"messages": [{"role": "user", "content": text(4, 12)}, {"role": "assistant", "content": text(6, 20)}]}
    msgs = [{"role": "system", "content": "You are a helpful assistant."}]
    for _ in range(rng.choice((1, 1, 2, 3))):
        msgs.append({"role": "user", "content": text(5, 60)})
        answer = {"role": "assistant", "content": text(10, 200)}
        if rng.random() < 0.3:
            answer["reasoning_content"] = text(10, 80)
        msgs.append(answer)
    return {"messages": msgs}


def write_data(path: str, n: int, short: bool, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        f.writelines(json.dumps(conversation(rng, short)) + "\n" for _ in range(n))


def timed_build(path: str, tok, workers: int, out: str, seq_length: int = 4096):
    from megatron_sft.config import DataConfig
    from megatron_sft.data.prepare import build_cache

    shutil.rmtree(out, ignore_errors=True)
    cfg = DataConfig(data_path=[path], seq_length=seq_length, split="100,0,0", num_workers=workers)
    t0 = time.perf_counter()
    meta = build_cache(cfg, tok, out, progress=False)
    return time.perf_counter() - t0, meta


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its reaped worker processes."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def force_worker_processes() -> None:
    """Measure real worker processes even on a machine where preparation would stay in one process."""
    from megatron_sft.data import workers

    workers.MIN_CORES_FOR_WORKERS = 0


def throughput(work: str, n: int, family: str, repeats: int) -> None:
    """Raw tokenizer vs end-to-end with 1 and 2 processes, interleaved `repeats` times; the best time
    of each is kept, so that other load on the machine distorts the ratios as little as possible."""
    from megatron_sft.data.render import ChatRenderer
    from megatron_sft.tiny import make_tiny_tokenizer

    force_worker_processes()
    tok = make_tiny_tokenizer(family)
    path = os.path.join(work, "bench.jsonl")
    write_data(path, n, short=False)
    renderer = ChatRenderer(tok)
    with open(path) as f:
        texts = [renderer.render_text([json.loads(line)["messages"]])[0] for line in f]
    backend = tok.backend_tokenizer
    best = {k: float("inf") for k in ("raw", "one", "two", "raw_cpu", "one_cpu")}
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), cpu_seconds()
        raw_tokens = sum(
            len(e)
            for i in range(0, len(texts), 512)
            for e in backend.encode_batch(texts[i : i + 512], add_special_tokens=False)
        )
        best["raw"], best["raw_cpu"] = (
            min(best["raw"], time.perf_counter() - t0),
            min(best["raw_cpu"], cpu_seconds() - c0),
        )
        c0 = cpu_seconds()
        one_s, meta = timed_build(path, tok, 1, os.path.join(work, "c1"))
        best["one_cpu"] = min(best["one_cpu"], cpu_seconds() - c0)
        two_s, _ = timed_build(path, tok, 2, os.path.join(work, "c2"))
        best["one"], best["two"] = min(best["one"], one_s), min(best["two"], two_s)
    tokens = meta["stats"]["tokens"]
    assert tokens == raw_tokens, (tokens, raw_tokens)  # the same texts, the same tokens
    raw_s, one_s, two_s = best["raw"], best["one"], best["two"]
    print(
        f"[throughput] {n} conversations (1-3 turns, 30% with reasoning), {tokens:,} tokens, tiny {family} "
        f"tokenizer; best of {repeats} interleaved runs"
    )
    print(f"  raw batched tokenizer (encode_batch, same rendered texts): {tokens / raw_s:,.0f} tokens/s")
    print(
        f"  end-to-end preparation, 1 process: {tokens / one_s:,.0f} tokens/s "
        f"-> ratio {raw_s / one_s:.2f} (goal >= 0.5); in CPU time {best['raw_cpu'] / best['one_cpu']:.2f} "
        "(less sensitive to other load)"
    )
    print(
        f"  end-to-end preparation, 2 workers: {tokens / two_s:,.0f} tokens/s -> speed-up {one_s / two_s:.2f}x "
        f"(forced: with {os.cpu_count()} cores preparation would stay in one process, whose rendering and "
        "multi-threaded tokenizing already overlap; worker processes are for machines with more cores)"
    )


def rss(work: str, n: int, family: str, budget_s: float) -> None:
    """Peak RSS at n conversations; if that run would exceed the time budget, measure at two smaller
    sizes and extrapolate linearly (labelled as such)."""
    first = _rss_run(work, min(n, 100_000), family)
    runs = [first]
    if first["n"] < n:
        estimate = first["build_s"] * n / first["n"]
        runs.append(_rss_run(work, n if estimate <= budget_s else 2 * first["n"], family))
    for r in runs:
        print(
            f"[memory] {r['n']:,} short conversations, 2 workers: built in {r['build_s']:.0f} s, "
            f"{r['tokens']:,} tokens, {r['packs']:,} packs; peak RSS main process {r['main_mib']:.0f} MiB, "
            f"largest worker {r['worker_mib']:.0f} MiB, all processes together {r['total_mib']:.0f} MiB"
        )
    last = runs[-1]
    if last["n"] < n:  # extrapolate the peaks linearly; labelled as such
        a, b = runs
        last = {
            k: b[k] + (b[k] - a[k]) / (b["n"] - a["n"]) * (n - b["n"]) for k in ("main_mib", "worker_mib", "total_mib")
        }
        print(
            f"  EXTRAPOLATED to {n:,} conversations (linear from the two runs above; the full run would take "
            f"about {b['build_s'] * n / b['n']:.0f} s here):"
        )
    print(
        f"  peak RSS for {n:,} conversations: main process {last['main_mib']:.0f} MiB, largest worker "
        f"{last['worker_mib']:.0f} MiB, all processes together {last['total_mib']:.0f} MiB (goal < 1024 MiB)"
    )


def _rss_run(work: str, n: int, family: str) -> dict:
    path = os.path.join(work, f"short{n}.jsonl")
    write_data(path, n, short=True, seed=1)
    cmd = [sys.executable, __file__, "--_child", path, os.path.join(work, "rss_cache"), family]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    os.remove(path)
    return {"n": n, **json.loads(out.strip().splitlines()[-1])}


def rss_child(path: str, out: str, family: str) -> None:
    import threading

    from megatron_sft.tiny import make_tiny_tokenizer

    force_worker_processes()
    peaks, done = {"main": 0.0, "worker": 0.0, "total": 0.0}, threading.Event()
    sampler = threading.Thread(target=_sample_memory, args=(peaks, done), daemon=True)
    sampler.start()
    build_s, meta = timed_build(path, make_tiny_tokenizer(family), 2, out, seq_length=2048)
    done.set()
    sampler.join()
    result = {"tokens": meta["stats"]["tokens"], "packs": meta["splits"]["train"]["packs"], "build_s": build_s}
    print(json.dumps({**result, **{f"{k}_mib": v for k, v in peaks.items()}}))


def _sample_memory(peaks: dict, done) -> None:
    """Peak RSS of this process and of its workers, from each one's own high-water mark (VmHWM; getrusage's
    ru_maxrss would report the parent's size for spawned children), and the peak of their summed RSS
    (shared libraries counted once per process: an upper bound)."""
    import psutil

    me = psutil.Process()
    while True:
        stop = done.wait(0.25)
        total = 0.0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss / 2**20
                key = "main" if p.pid == me.pid else "worker"
                peaks[key] = max(peaks[key], _high_water_mib(p.pid))
            except (psutil.NoSuchProcess, OSError):
                pass
        peaks["total"] = max(peaks["total"], total)
        if stop:
            return


def _high_water_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def packing_fill() -> None:
    import numpy as np

    from megatron_sft.data.packing import fill, greedy_concat_bins, pack

    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(350), 1.0, 50000).astype(np.int64), 16, 4096)
    cap = 4096
    t0 = time.perf_counter()
    offsets, _ = pack(lengths, cap, "best_fit")
    pack_s = time.perf_counter() - t0
    greedy = greedy_concat_bins(lengths, cap)
    tails = _cut_concat_dropped(lengths, cap)
    print(f"[packing] 50,000 log-normal lengths (median 350, sigma 1, in [16, 4096]), seq-length {cap}")
    print(f"  best fit decreasing: fill {fill(lengths, len(offsets) - 1, cap):.2%}, no token dropped ({pack_s:.2f} s)")
    print(
        f"  greedy in-order concatenation (new row when the next sample does not fit): "
        f"fill {fill(lengths, greedy, cap):.2%}"
    )
    print(f"  padding each sample to seq-length: fill {lengths.mean() / cap:.2%}")
    print(
        f"  (the reference's concatenation that cuts the row's last sample: fill 100%, but drops "
        f"{tails / lengths.sum():.1%} of all tokens)"
    )


def _cut_concat_dropped(lengths, cap: int) -> int:
    dropped, room = 0, cap
    for n in lengths.tolist():
        if n > room:
            dropped += n - room
            room = cap
        else:
            room -= n
            room = room or cap
    return dropped


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        rss_child(*sys.argv[2:5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rss-conversations", type=int, default=1_000_000)
    parser.add_argument("--rss-budget-s", type=float, default=180)
    parser.add_argument("--family", default="qwen3")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    import logging

    logging.getLogger("megatron_sft").setLevel(logging.ERROR)  # the data's "logged once" notices
    work = args.workdir or tempfile.mkdtemp(prefix="bench_data_")
    os.makedirs(work, exist_ok=True)
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work distorts ratios)")
    try:
        throughput(work, args.conversations, args.family, args.repeats)
        rss(work, args.rss_conversations, args.family, args.rss_budget_s)
        packing_fill()
        print(f"load average at end: {os.getloadavg()[0]:.1f}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
