"""The parallel layout from TP PP CP DP EP ETP NNODES, the process count, and the command that starts them."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from megatron_sft.launch.settings import LaunchError, Settings

SIZES = ("TP", "PP", "CP", "DP", "EP", "ETP")


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    cp: int
    dp: int
    ep: int
    etp: int
    nnodes: int

    @property
    def nproc(self) -> int:
        return self.tp * self.pp * self.cp * self.dp

    def flags(self) -> list[str]:
        return ["--tensor-model-parallel-size", str(self.tp), "--pipeline-model-parallel-size", str(self.pp),
                "--context-parallel-size", str(self.cp), "--expert-model-parallel-size", str(self.ep),
                "--expert-tensor-parallel-size", str(self.etp)]


def read_layout(s: Settings, forced: dict[str, int] | None = None) -> Layout:
    """Sizes from env > conf > 1 (ETP: TP), or `forced` (a script that must run at e.g. TP=1)."""
    forced = forced or {}
    sizes, origins = {}, []
    for name in (*SIZES, "NNODES"):
        if name in forced:
            sizes[name] = forced[name]
            continue
        value, origin = s.lookup(name, str(sizes["TP"]) if name == "ETP" else "1")
        sizes[name] = s.positive_int(name, value)
        if origin != "default":
            origins.append(f"{name}: {origin}")
    layout = Layout(*(sizes[n] for n in (*SIZES, "NNODES")))
    if layout.nproc % layout.nnodes:
        raise LaunchError(f"TP x PP x CP x DP = {layout.nproc} processes do not split evenly over "
                          f"NNODES={layout.nnodes} nodes")
    per_node = s.given("NPROC_PER_NODE")
    if per_node:
        offered = layout.nnodes * s.positive_int("NPROC_PER_NODE", per_node)
        if offered != layout.nproc:
            sizes_text = f"{layout.tp} x {layout.pp} x {layout.cp} x {layout.dp}"
            raise LaunchError(f"TP x PP x CP x DP = {sizes_text} = {layout.nproc} processes, but NNODES x "
                              f"NPROC_PER_NODE = {layout.nnodes} x {per_node} = {offered}; choose TP, PP, CP and DP "
                              f"whose product is {offered}")
    text = " ".join(f"{n}={sizes[n]}" for n in SIZES)
    plural = "es" if layout.nproc > 1 else ""
    s.note("layout", f"{text} -> {layout.nproc} process{plural} (TP x PP x CP x DP) on {layout.nnodes} node(s)",
           ", ".join(origins))
    return layout


def launcher(s: Settings, layout: Layout) -> list[str]:
    """LAUNCH_SCRIPT, else python (one process), torchrun --standalone (one node) or torchrun's rendezvous."""
    custom = s.given("LAUNCH_SCRIPT")
    if custom:
        s.note("LAUNCH_SCRIPT", custom, "env")
        return shlex.split(custom)
    if layout.nnodes > 1:
        master, rank = s.given("MASTER_ADDR"), s.given("NODE_RANK")
        if not master:
            raise LaunchError(f"NNODES={layout.nnodes}: set MASTER_ADDR to the host name of node 0")
        if not rank.isdigit() or int(rank) >= layout.nnodes:
            raise LaunchError(f"NNODES={layout.nnodes}: set NODE_RANK to this node's rank, 0 .. {layout.nnodes - 1} "
                              f"(got '{rank}')")
        command = ["torchrun", f"--nnodes={layout.nnodes}", f"--node_rank={rank}",
                   f"--nproc_per_node={layout.nproc // layout.nnodes}", f"--master_addr={master}",
                   f"--master_port={s.given('MASTER_PORT') or 29500}"]
    elif layout.nproc > 1:
        command = ["torchrun", "--standalone", f"--nproc_per_node={layout.nproc}"]
    else:
        command = ["python"]
    s.note("launcher", " ".join(command))
    return command
