"""Model architecture flags (Megatron-LM names and meanings).

Every flag a checkpoint can also describe defaults to None here, so resolve.py can tell a flag the
user gave from one they did not: explicit flag > the checkpoint's own record > Megatron's default
(resolve.MEGATRON_DEFAULTS). Boolean ones are store_true/store_false with default None for the same
reason.
"""

from __future__ import annotations

from argparse import ArgumentParser


def add_model_args(parser: ArgumentParser) -> None:
    g = parser.add_argument_group(
        "model architecture (default: from --load / --pretrained-model-path, else Megatron's)"
    )
    g.add_argument("--num-layers", type=int, default=None, help="transformer layers")
    g.add_argument("--hidden-size", type=int, default=None, help="hidden (model) dimension")
    g.add_argument(
        "--ffn-hidden-size",
        type=int,
        default=None,
        help="default 4 x hidden size (with --swiglu: 2/3 of that, rounded down to 64)",
    )
    g.add_argument("--num-attention-heads", type=int, default=None, help="attention (query) heads")
    g.add_argument(
        "--group-query-attention",
        action="store_true",
        default=None,
        help="grouped-query attention: --num-query-groups key/value heads shared by the query heads",
    )
    g.add_argument("--num-query-groups", type=int, default=None, help="used with --group-query-attention")
    g.add_argument("--kv-channels", type=int, default=None, help="head dimension; default hidden / heads")
    g.add_argument("--max-position-embeddings", type=int, default=None, help="default --seq-length")
    g.add_argument(
        "--position-embedding-type",
        choices=["learned_absolute", "rope", "none"],
        default=None,
        help="rope for Qwen and Llama; learned_absolute is Megatron's default",
    )
    g.add_argument(
        "--rotary-percent", type=float, default=None, help="share of each head's dimensions rotated by RoPE"
    )
    g.add_argument("--rotary-base", type=int, default=None, help="RoPE theta (Qwen3: 1000000, Llama 3: 500000)")
    g.add_argument("--use-rope-scaling", action="store_true", default=None, help="Llama 3.x RoPE scaling")
    g.add_argument(
        "--rope-scaling-factor",
        type=float,
        default=None,
        help="Llama 3.x RoPE scaling factor (with --use-rope-scaling)",
    )
    g.add_argument(
        "--normalization", choices=["LayerNorm", "RMSNorm"], default=None, help="RMSNorm for Qwen and Llama"
    )
    g.add_argument("--norm-epsilon", type=float, default=None, help="epsilon of the norms (Qwen3: 1e-6)")
    g.add_argument("--swiglu", action="store_true", default=None, help="SwiGLU MLP (gate and up projections)")
    g.add_argument(
        "--qk-layernorm", action="store_true", default=None, help="RMSNorm on each query and key head (Qwen3)"
    )
    g.add_argument(
        "--add-qkv-bias",
        action="store_true",
        default=None,
        help="bias on the query, key and value projections only (Qwen2.5)",
    )
    g.add_argument(
        "--disable-bias-linear",
        action="store_false",
        dest="add_bias_linear",
        default=None,
        help="no bias on the linear layers (Qwen and Llama)",
    )
    g.add_argument(
        "--untie-embeddings-and-output-weights",
        action="store_true",
        default=None,
        help="a separate output layer instead of the input embedding's transpose",
    )
    g.add_argument(
        "--init-method-std",
        type=float,
        default=None,
        help="standard deviation of the random initialisation (a model trained from scratch)",
    )
    g.add_argument(
        "--attention-dropout",
        type=float,
        default=None,
        help="dropout on the attention probabilities (Qwen and Llama: 0.0)",
    )
    g.add_argument(
        "--hidden-dropout",
        type=float,
        default=None,
        help="dropout on the hidden states after attention and MLP (Qwen and Llama: 0.0)",
    )
    g.add_argument(
        "--make-vocab-size-divisible-by",
        type=int,
        default=None,
        help="pad the vocabulary to a multiple of this x TP (default 128); a checkpoint's "
        "vocab_size is used as is and only checked against it",
    )
    g.add_argument("--squared-relu", action="store_true", default=None, help="relu(x)^2 MLP activation (Nemotron-H)")
    _add_fusion_args(parser)
    _add_moe_args(parser)
    _add_hybrid_args(parser)


def _add_hybrid_args(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("hybrid models (Mamba-2 with attention, MLP and MoE layers; Megatron-Core's MambaModel)")
    g.add_argument("--hybrid-override-pattern", default=None,
                   help="one symbol per layer: M Mamba-2, * attention, - MLP, E MoE (e.g. M-M*-); a hybrid model")
    g.add_argument("--is-hybrid-model", action="store_true",
                   help="accepted for compatibility; a --hybrid-override-pattern makes the model hybrid")
    g.add_argument("--mamba-state-dim", type=int, default=None, help="SSM state size per head (default 128)")
    g.add_argument("--mamba-head-dim", type=int, default=None, help="Mamba head dimension (default 64)")
    g.add_argument("--mamba-num-groups", type=int, default=None, help="B/C groups (default 8)")
    g.add_argument("--mamba-num-heads", type=int, default=None, help="Mamba heads (default 2 x hidden / head dim)")
    g.add_argument("--mamba-chunk-size", type=int, default=None,
                   help="chunk length of the SSD scan (default 128; from config.json's chunk_size)")
    g.add_argument("--mamba-conv-kernel", type=int, default=None,
                   help="width of the causal convolution (default 4; from config.json's conv_kernel)")


def _add_fusion_args(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("kernel fusions (GPU only; always off on CPU)")
    g.add_argument(
        "--no-masked-softmax-fusion",
        action="store_false",
        dest="masked_softmax_fusion",
        help="Megatron's fused masked softmax off (always off with the packing mask: it ignores it)",
    )
    g.add_argument(
        "--no-rope-fusion",
        action="store_false",
        dest="apply_rope_fusion",
        help="the fused RoPE kernel off (it needs Transformer Engine or Apex)",
    )
    g.add_argument(
        "--no-bias-swiglu-fusion",
        action="store_false",
        dest="bias_swiglu_fusion",
        help="the fused bias + SwiGLU kernel off",
    )
    g.add_argument(
        "--no-bias-dropout-fusion",
        action="store_false",
        dest="bias_dropout_fusion",
        help="the fused bias + dropout + add kernel off",
    )
    g.add_argument("--use-mcore-models", action="store_true", help="accepted for compatibility; always on")


def _add_moe_args(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("mixture of experts")
    g.add_argument(
        "--num-experts", type=int, default=None, help="experts per MoE layer (a dense model when not given)"
    )
    g.add_argument("--moe-ffn-hidden-size", type=int, default=None, help="default --ffn-hidden-size")
    g.add_argument("--moe-router-topk", type=int, default=None, help="experts each token is routed to")
    g.add_argument(
        "--moe-router-pre-softmax",
        action="store_true",
        default=None,
        help="softmax over all experts before top-k (HF norm_topk_prob=false)",
    )
    g.add_argument(
        "--moe-router-score-function",
        choices=["softmax", "sigmoid"],
        default=None,
        help="router scores: softmax (Qwen3-MoE) or sigmoid",
    )
    g.add_argument(
        "--moe-router-load-balancing-type",
        default=None,
        choices=["aux_loss", "seq_aux_loss", "global_aux_loss", "sinkhorn", "none"],
        help="the auxiliary load-balancing loss of the router",
    )
    g.add_argument("--moe-aux-loss-coeff", type=float, default=None, help="weight of the load-balancing loss (0: off)")
    g.add_argument("--moe-router-enable-expert-bias", action="store_true", default=None,
                   help="a per-expert bias added to the scores only to choose experts (sigmoid routers; Nemotron)")
    g.add_argument("--moe-router-topk-scaling-factor", type=float, default=None,
                   help="scale of the chosen experts' weights (HF routed_scaling_factor)")
    g.add_argument("--moe-shared-expert-intermediate-size", type=int, default=None,
                   help="width of a shared expert every token passes through (default: none)")
    g.add_argument(
        "--moe-router-dtype",
        choices=["fp32", "fp64"],
        help="dtype of the router's computation (fp32 is the usual choice in bf16 runs)",
    )
    g.add_argument(
        "--moe-token-dispatcher-type",
        choices=["allgather", "alltoall", "flex"],
        help="how tokens reach their experts across EP ranks (allgather works everywhere; alltoall and flex need "
        "NCCL)",
    )
    g.add_argument(
        "--moe-grouped-gemm",
        action="store_true",
        help="one grouped GEMM for all local experts (needs Transformer Engine or grouped_gemm)",
    )
