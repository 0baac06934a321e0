"""Parallel layout flags: tensor, pipeline, context, expert, sequence and data parallelism."""

from __future__ import annotations

from argparse import ArgumentParser


def add_parallel_args(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("parallelism (data-parallel size = world size / (TP x PP x CP))")
    g.add_argument(
        "--tensor-model-parallel-size", type=int, help="TP: each layer's weights split over this many ranks"
    )
    g.add_argument("--pipeline-model-parallel-size", type=int, help="PP: the layers split into this many stages")
    g.add_argument(
        "--num-layers-per-virtual-pipeline-stage",
        type=int,
        help="interleaved pipeline schedule; needs --pipeline-model-parallel-size > 1",
    )
    g.add_argument("--context-parallel-size", type=int, help="CP: each packed sequence split over this many ranks")
    g.add_argument(
        "--cp-comm-type",
        nargs="+",
        choices=["p2p", "a2a", "allgather", "a2a+p2p"],
        help="the packed attention all-gathers K/V over the CP group: allgather (the default) is the one it does",
    )
    g.add_argument("--expert-model-parallel-size", type=int, help="EP: the experts split over this many ranks")
    g.add_argument("--expert-tensor-parallel-size", type=int, help="default --tensor-model-parallel-size")
    g.add_argument("--sequence-parallel", action="store_true", help="needs --tensor-model-parallel-size > 1")
    g.add_argument(
        "--use-distributed-optimizer",
        action="store_true",
        help="shard the fp32 main parameters and Adam moments over the data-parallel ranks",
    )
    g.add_argument(
        "--overlap-grad-reduce",
        action="store_true",
        help="overlap the data-parallel gradient reduction with the backward pass",
    )
    g.add_argument(
        "--overlap-param-gather",
        action="store_true",
        help="overlap the distributed optimizer's parameter all-gather with the forward pass",
    )
    g.add_argument("--distributed-timeout-minutes", type=int, help="timeout of the collective operations")
