"""Megatron-Core's MambaMixer on the CPU with megatron_sft/ops in place of mamba_ssm (runtime/mamba_fallback.py): the
names it patches still exist, and the mixer (training and prefill paths) gives transformers' NemotronH mixer's output
on the same weights; a packed pair of samples gives what each gives alone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.numerics]  # a fresh interpreter with megatron-core and transformers

SCRIPT = textwrap.dedent(
    """
    import os
    import torch
    import torch.distributed as dist
    from megatron_sft.runtime import cpu_mode, mamba_fallback
    cpu_mode.enable()
    assert mamba_fallback.enable() and mamba_fallback.enable()  # idempotent
    from megatron.core.ssm import mamba_mixer
    missing = [n for n in mamba_fallback.PATCHED if not hasattr(mamba_mixer, n)]
    assert not missing, f"megatron.core.ssm.mamba_mixer no longer has {missing}"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PORT"])
    dist.init_process_group("gloo", rank=0, world_size=1)
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import random as mc_random
    parallel_state.initialize_model_parallel(1, 1)
    mc_random.model_parallel_cuda_manual_seed(0)
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer import TransformerConfig
    from transformers import NemotronHConfig
    from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHMamba2Mixer

    hidden, heads, headdim, groups, state = 64, 8, 16, 2, 16
    torch.manual_seed(0)
    theirs = NemotronHMamba2Mixer(NemotronHConfig(
        hidden_size=hidden, mamba_num_heads=heads, mamba_head_dim=headdim, n_groups=groups, ssm_state_size=state,
        chunk_size=8, conv_kernel=4, hybrid_override_pattern="M", vocab_size=64, num_attention_heads=4,
        num_key_value_heads=4, head_dim=16, intermediate_size=64, time_step_min=0.0), layer_idx=0).eval()
    config = TransformerConfig(num_layers=1, hidden_size=hidden, num_attention_heads=4, mamba_state_dim=state,
                               mamba_head_dim=headdim, mamba_num_groups=groups, mamba_num_heads=heads,
                               use_cpu_initialization=True, add_bias_linear=False, hidden_dropout=0.0,
                               attention_dropout=0.0, params_dtype=torch.float32)
    from megatron.core.process_groups_config import ProcessGroupCollection
    ours = mamba_mixer.MambaMixer(config, mamba_mixer.MambaMixerSubmodules(
        in_proj=ColumnParallelLinear, out_proj=RowParallelLinear), d_model=hidden, chunk_size=8, layer_number=1,
        pg_collection=ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp", "cp"]))
    with torch.no_grad():
        for name in ("in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight",
                     "out_proj.weight"):
            ours.get_parameter(name).copy_(theirs.get_parameter(name))
    x = torch.randn(1, 21, hidden)  # longer than the chunk and not a multiple of it
    with torch.no_grad():
        want = theirs.torch_forward(x)
        got_training, _ = ours(x.transpose(0, 1))
        ours.use_mem_eff_path = False  # the prefill path: mamba_chunk_scan_combined with the gated norm after
        got_prefill, _ = ours(x.transpose(0, 1))
        ours.use_mem_eff_path = True
        scale = want.abs().max()
        for name, got in (("training", got_training), ("prefill", got_prefill)):
            err = ((got.transpose(0, 1) - want).abs().max() / scale).item()
            assert err < 1e-5, f"{name} path: {err:.2e} of the largest output"
        cu = torch.tensor([0, 5, 21], dtype=torch.int32)  # a boundary inside the first chunk of 8
        packed = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=16,
                                 max_seqlen_kv=16)
        together, _ = ours(x.transpose(0, 1), packed_seq_params=packed)
        alone = torch.cat([ours(x[:, :5].transpose(0, 1))[0], ours(x[:, 5:].transpose(0, 1))[0]])
        assert (together - alone).abs().max().item() < 1e-6, (together - alone).abs().max()
    print("MAMBA-FALLBACK-OK")
    """
)


def test_megatron_mamba_mixer_runs_on_the_pytorch_kernels():
    env = {**os.environ, "PORT": str(free_port())}  # a fresh interpreter: CPU mode patches torch.cuda process-wide
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=180, env=env)
    assert "MAMBA-FALLBACK-OK" in proc.stdout, proc.stderr[-4000:]
