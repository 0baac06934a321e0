"""PyTorch implementations of the state-space kernels Megatron-Core's Mamba layers call (mamba_ssm's chunked SSD
scan, causal_conv1d, the grouped gated RMSNorm), with the same signatures and math, for machines without those
CUDA packages. Exact (no approximation), chunked: memory linear in the sequence length."""
