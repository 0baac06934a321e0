"""A tiny Nemotron-H (transformers' own NemotronHForCausalLM, fp32) built as Megatron-Core's MambaModel with the local
spec and the PyTorch kernels (models/hybrid.py), its Hugging Face weights imported through nvidia-modelopt's NemotronH
table: logits = transformers' (1e-4), for a dense pattern and one with MoE, 2 SSM groups, 21 tokens with chunk 8;
packed samples (a boundary inside a scan chunk) = each sample alone (1e-5). TP=1; the other layouts come with the
family's registration."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.numerics]  # two fresh interpreters with megatron-core and transformers: ~28 s

SCRIPT = textwrap.dedent(
    """
    import os, sys, json
    import torch
    import torch.distributed as dist
    from megatron_sft.runtime import cpu_mode
    cpu_mode.enable()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PORT"])
    dist.init_process_group("gloo", rank=0, world_size=1)
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import random as mc_random
    parallel_state.initialize_model_parallel(1, 1)
    mc_random.model_parallel_cuda_manual_seed(0)
    from megatron.core.activations import squared_relu
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.transformer import TransformerConfig
    from transformers import AutoModelForCausalLM, NemotronHConfig, NemotronHForCausalLM
    from megatron_sft.checkpointing.hf import import_hf_weights
    from megatron_sft.models.hybrid import build_hybrid_model

    pattern, out = sys.argv[1], sys.argv[2]
    moe = "E" in pattern
    torch.manual_seed(0)
    NemotronHForCausalLM(NemotronHConfig(
        vocab_size=128, hidden_size=64, hybrid_override_pattern=pattern, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, intermediate_size=96, mamba_num_heads=8, mamba_head_dim=16,
        ssm_state_size=16, n_groups=2, conv_kernel=4, chunk_size=8, n_routed_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=32, moe_shared_expert_intermediate_size=48,
        use_mamba_kernels=False)).save_pretrained(out)
    hf = json.load(open(f"{out}/config.json"))
    moe_args = dict(num_moe_experts=hf["n_routed_experts"], moe_router_topk=hf["num_experts_per_tok"],
                    moe_ffn_hidden_size=hf["moe_intermediate_size"],
                    moe_shared_expert_intermediate_size=hf["moe_shared_expert_intermediate_size"],
                    moe_router_score_function="sigmoid", moe_router_enable_expert_bias=True,
                    moe_router_topk_scaling_factor=hf["routed_scaling_factor"], moe_router_dtype="fp32",
                    moe_token_dispatcher_type="allgather", moe_aux_loss_coeff=0.0) if moe else {}
    config = TransformerConfig(
        num_layers=len(pattern), hidden_size=hf["hidden_size"], num_attention_heads=hf["num_attention_heads"],
        num_query_groups=hf["num_key_value_heads"], kv_channels=hf["head_dim"],
        ffn_hidden_size=hf["intermediate_size"], mamba_state_dim=hf["ssm_state_size"],
        mamba_head_dim=hf["mamba_head_dim"], mamba_num_groups=hf["n_groups"], mamba_num_heads=hf["mamba_num_heads"],
        normalization="RMSNorm", layernorm_epsilon=hf["layer_norm_epsilon"], activation_func=squared_relu,
        gated_linear_unit=False, add_bias_linear=False, use_cpu_initialization=True, hidden_dropout=0.0,
        attention_dropout=0.0, is_hybrid_model=True, bias_dropout_fusion=False, masked_softmax_fusion=False,
        bias_activation_fusion=False, persist_layer_norm=False, apply_rope_fusion=False,
        params_dtype=torch.float32, **moe_args)
    model = build_hybrid_model(config, hf["vocab_size"], pattern, 64).eval()
    import_hf_weights([model], out, torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    for layer in reference.model.layers:  # its PyTorch path clamps dt at time_step_min; the kernels and Megatron do not
        if layer.block_type == "linear_attention":
            layer.mixer.time_step_min = 0.0
    ids = torch.randint(0, hf["vocab_size"], (1, 21))
    with torch.no_grad():
        want = reference(ids, use_cache=False).logits  # its cache fails on '-' layers in transformers 5.14.1
        got = model(ids, torch.arange(21)[None], None)
        diff = (got - want).abs().max().item()
        assert (want - reference.__class__(reference.config).eval()(ids, use_cache=False).logits).abs().max() > 1e-2
        assert diff <= 1e-4, f"{pattern}: max |logit difference| {diff:.3g}"
        lengths = [5, 16]  # the first boundary inside the first scan chunk of 8
        cu = torch.tensor([0, 5, 21], dtype=torch.int32)
        packed = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=16,
                                 max_seqlen_kv=16)
        positions = torch.cat([torch.arange(n) for n in lengths])[None]
        together = model(ids, positions, None, packed_seq_params=packed)
        alone = torch.cat([model(ids[:, :5], torch.arange(5)[None], None),
                           model(ids[:, 5:], torch.arange(16)[None], None)], dim=1)
        gap = (together - alone).abs().max().item()
        assert gap <= 1e-5, f"{pattern}: packed vs alone {gap:.3g}"
    print(f"HYBRID-OK {pattern} logits {diff:.2e} packed {gap:.2e}")
    """
)


@pytest.mark.parametrize("pattern", ["M*M-", "M*M-E"])
def test_tiny_nemotron_h_logits_equal_transformers_and_packing_is_exact(pattern, tmp_path):
    env = {**os.environ, "PORT": str(free_port())}  # a fresh interpreter: CPU mode patches torch.cuda process-wide
    proc = subprocess.run([sys.executable, "-c", SCRIPT, pattern, str(tmp_path / "nemotron_h")], capture_output=True,
                          text=True, timeout=300, env=env)
    assert "HYBRID-OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
