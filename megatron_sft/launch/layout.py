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


# torchrun, with a user error kept to its one line (launch/torchrun.py).
TORCHRUN = ("python", "-m", "megatron_sft.launch.torchrun")


def torchrun_args(nproc_per_node: int, nnodes: int = 1, node_rank: int = 0, master_addr: str | None = None,
                  master_port: int | None = None) -> list[str]:
    """torchrun's arguments for this many processes: --standalone on one node (unless a port is given), else a
    rendezvous at master_addr:master_port (29500 by default). The one place the launch line is built."""
    if nnodes == 1 and master_port is None:
        return ["--standalone", f"--nproc_per_node={nproc_per_node}"]
    return [f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--nproc_per_node={nproc_per_node}",
            f"--master_addr={master_addr or '127.0.0.1'}", f"--master_port={master_port or 29500}"]


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
        command = [*TORCHRUN, *torchrun_args(layout.nproc // layout.nnodes, layout.nnodes, int(rank), master,
                                             int(s.given("MASTER_PORT") or 29500))]
    elif layout.nproc > 1:
        command = [*TORCHRUN, *torchrun_args(layout.nproc)]
    else:
        command = ["python"]
    s.note("launcher", " ".join(command))
    return command
