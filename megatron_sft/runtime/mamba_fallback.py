"""Megatron-Core's Mamba layers without mamba_ssm and causal_conv1d (CPUs, and GPUs without those packages): the
PyTorch kernels of megatron_sft/ops in their place, in the names megatron.core.ssm.mamba_mixer calls.

megatron-core 0.16.1's mamba_mixer imports mamba_ssm inside a try (falling back to a MagicMock for the gated norm and
refusing to build without it), and a triton-only module unconditionally (three tensor ops that only dynamic batching
uses). enable() stubs that module when triton is absent, then sets HAVE_MAMBA_SSM, the gated norm class and the two
scan entry points, and the packed-sequence version check; without Transformer Engine, the one TE function Mamba context
parallelism calls. Decoding keeps the mixer's own PyTorch fallbacks
(selective_state_update and causal_conv1d_update stay None). tests/unit/test_mamba_fallback.py fails if an upgrade
renames any of these.
"""

from __future__ import annotations

import importlib.util
import sys
import types

TENSOR_OPS = "megatron.core.inference.contexts.attention_context.triton.tensor_ops"
PATCHED = ("HAVE_MAMBA_SSM", "ExtendedRMSNorm", "mamba_chunk_scan_combined", "mamba_split_conv1d_scan_combined",
           "_check_mamba_sequence_packing_support")


def _triton_stub() -> types.ModuleType:
    stub = types.ModuleType(TENSOR_OPS)

    def needs_triton(*args, **kwargs):
        raise NotImplementedError("dynamic-batching inference of Mamba layers needs triton (a CUDA machine)")

    stub.tensor_get_slice_after = stub.tensor_merge = stub.tensor_masked_update = needs_triton
    return stub


def enable() -> bool:
    """Idempotent. True when the PyTorch kernels are in use, False when mamba_ssm is installed (its kernels then)."""
    if importlib.util.find_spec("mamba_ssm") is not None:
        return False
    if importlib.util.find_spec("triton") is None and TENSOR_OPS not in sys.modules:
        sys.modules[TENSOR_OPS] = _triton_stub()
    from megatron.core.ssm import mamba_mixer

    if getattr(mamba_mixer, "megatron_sft_kernels", False):
        return True
    from megatron_sft.ops import ssd
    from megatron_sft.ops.gated_norm import GatedRMSNorm

    class ShardedGatedRMSNorm(GatedRMSNorm):
        """mamba_mixer.ExtendedRMSNorm's checkpoint layout: the weight sharded along its first axis over TP."""

        def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
            from megatron.core import parallel_state
            from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

            group = getattr(self, "tp_group", None) or parallel_state.get_tensor_model_parallel_group()
            return make_sharded_tensors_for_checkpoint(self.state_dict(prefix="", keep_vars=True), prefix,
                                                       {"weight": 0}, sharded_offsets, tp_group=group,
                                                       dp_cp_group=metadata["dp_cp_group"])

    mamba_mixer.HAVE_MAMBA_SSM = True
    mamba_mixer.ExtendedRMSNorm = ShardedGatedRMSNorm
    mamba_mixer.mamba_chunk_scan_combined = ssd.mamba_chunk_scan_combined
    mamba_mixer.mamba_split_conv1d_scan_combined = ssd.mamba_split_conv1d_scan_combined
    # its check reads mamba_ssm's and causal_conv1d's versions; ours handle packed sequences (seq_idx) exactly
    mamba_mixer._check_mamba_sequence_packing_support = lambda for_inference_not_training=True: (True, None)
    _context_parallel_without_te()
    mamba_mixer.megatron_sft_kernels = True
    return True


def _context_parallel_without_te() -> None:
    """Mamba context parallelism over packed samples reorders tokens with Transformer Engine's
    thd_get_partitioned_indices (and asserts TE >= 1.10): without TE, the same split from ops/context_parallel.py."""
    from megatron.core.ssm import mamba_context_parallel as mcp

    if mcp.tex is not None:
        return
    from megatron_sft.ops.context_parallel import thd_get_partitioned_indices

    mcp.tex = types.SimpleNamespace(thd_get_partitioned_indices=thd_get_partitioned_indices)
    mcp.is_te_min_version = lambda version, check_equality=True: True  # only asked about that function
