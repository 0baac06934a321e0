"""Quantization (quantize.py, QAT through training, the quantized export) against independent references:
nvidia-modelopt quantizing the transformers model with the same weights, calibration texts and config; the
exported files dequantized by hand; TP=1 vs TP=2 training; a straight run vs a resumed one.

The models have 256-wide row-parallel inputs (head_dim 32 x 8 heads, MLP 256), so INT4's 128-wide blocks are
whole at TP=2 too."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path

import pytest
import torch

from tests.conftest import WORKERS, checkpoint_entries, torchrun
from tests.distributed.test_training import write_reversal_data
from tests.distributed.workers.quantization import (EXPORT_FORMATS, EXPORT_VARIANTS, FAMILIES, FORMATS,
                                                    QAT_FORMATS)

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.numerics, pytest.mark.timeout(900)]
MODELOPT_CFG = {"fp8": "FP8_DEFAULT_CFG", "int8_sq": "INT8_SMOOTHQUANT_CFG", "int4_awq": "INT4_AWQ_CFG",
                "INT4_BLOCKWISE_WEIGHT_ONLY_CFG": "INT4_BLOCKWISE_WEIGHT_ONLY_CFG"}
EXPORT_ALGO = {"fp8": "FP8", "int8_sq": "W8A8_SQ_PER_CHANNEL", "int8": "W8A8_SQ_PER_CHANNEL",
               "int4_awq": "W4A16_AWQ", "INT4_BLOCKWISE_WEIGHT_ONLY_CFG": "W4A16_AWQ", "w4a8_awq": "W4A8_AWQ",
               "int4_awq_partial": "W4A16_AWQ"}
AWQ_BOUND = 0.75  # INT4-AWQ: |ours - reference| / |reference - unquantized| (relative RMS), see below
FLIP_BOUND = 0.1  # the other formats: the same ratio, admitting codes flipped at rounding boundaries, see below
VALUES_RTOL = 1e-5  # calibrated quantizer values: reduction order only (measured <= 2e-6)
FLIPPED_CODES = 1e-4  # exported codes one off Megatron's at a rounding boundary, as a fraction (see the test)
SEQ, CALIB = 64, 4  # the worker's --seq-length and --calib-size


def _write_calibration_texts(path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    letters = "abcdefghijklmnopqrstuvwxyz     "
    with open(path, "w") as f:
        for _ in range(6):
            text = "".join(letters[i] for i in torch.randint(0, len(letters), (200,), generator=gen).tolist())
            f.write(json.dumps({"text": text}) + "\n")


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    from megatron_sft.tiny import make_tiny_model

    out = tmp_path_factory.mktemp("quantization")
    for family in FAMILIES:
        make_tiny_model(family, out / "models" / family, head_dim=32, intermediate_size=256)
    (out / "data").mkdir()
    _write_calibration_texts(out / "data" / "calib.jsonl")
    write_reversal_data(out / "data" / "chat.jsonl", 64, seed=0)
    torch.manual_seed(0)
    torch.save(torch.randint(0, 400, (2, 32)), out / "tokens.pt")
    for world_size in (1, 2):  # 2 trains from what 1 quantized
        torchrun(WORKERS / "quantization.py", world_size, ["--models", out / "models", "--data", out / "data",
                                                           "--out", out], timeout=900)
    return out


@cache
def _reference(model_dir: str, fmt: str) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(unquantized logits, quantized logits, quantizer values under Megatron's names) of transformers' model
    quantized by modelopt on the same calibration tokens. Fused layers share one scale in Megatron (and in
    modelopt's export): per-tensor amax of q/k/v and of gate/up are set to their maximum, as a fused kernel needs
    them."""
    import modelopt.torch.quantization as mtq
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [json.loads(line)["text"] for line in open(Path(model_dir).parents[1] / "data" / "calib.jsonl")]
    calib = [torch.tensor([tokenizer(t, add_special_tokens=False)["input_ids"][:SEQ]]) for t in texts[:CALIB]]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokens = torch.load(Path(model_dir).parents[1] / "tokens.pt")
    with torch.no_grad():
        plain = model(tokens).logits

    def loop(m):
        for sample in calib:
            m(sample)

    mtq.quantize(model, copy.deepcopy(getattr(mtq, MODELOPT_CFG[fmt])), loop)
    for layer in model.model.layers:
        for group in ([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj],
                      [layer.mlp.gate_proj, layer.mlp.up_proj]):
            for which in ("weight_quantizer", "input_quantizer"):
                quantizers = [getattr(m, which) for m in group]
                if quantizers[0].is_enabled and quantizers[0].amax is not None and quantizers[0].amax.numel() == 1:
                    shared = torch.stack([q.amax for q in quantizers]).max()
                    for q in quantizers:
                        q.amax = shared.clone()
    with torch.no_grad():
        return plain, model(tokens).logits, _as_megatron(model)


def _as_megatron(model) -> dict[str, torch.Tensor]:
    """The transformers model's quantizer values (amax, pre_quant_scale) under Megatron's names and layouts, laid
    out here from the two layouts themselves, not by the project's converter: Megatron's fused linear_qkv holds,
    per query group, that group's query heads, then its key head, then its value head; linear_fc1 holds [gate;
    up]. One input feeds q/k/v (and gate/up), so their input values are one; per-tensor weight values of a
    fused layer are already the shared maximum (above)."""
    cfg = model.config
    groups, heads = cfg.num_key_value_heads, cfg.num_attention_heads
    values = {}
    for i, layer in enumerate(model.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        fused = {"self_attention.linear_qkv": [attn.q_proj, attn.k_proj, attn.v_proj],
                 "self_attention.linear_proj": [attn.o_proj], "mlp.linear_fc1": [mlp.gate_proj, mlp.up_proj],
                 "mlp.linear_fc2": [mlp.down_proj]}
        for name, modules in fused.items():
            for which in ("weight_quantizer", "input_quantizer"):
                quantizers = [getattr(m, which) for m in modules]
                if not quantizers[0].is_enabled:
                    continue
                for attr in ("amax", "pre_quant_scale"):
                    parts = [getattr(q, attr) for q in quantizers]
                    if parts[0] is None:
                        continue
                    key = f"decoder.layers.{i}.{name}.{which}._{attr}"
                    if which == "input_quantizer" or parts[0].numel() == 1 or len(parts) == 1:
                        values[key] = parts[0].flatten()
                    elif len(parts) == 2:  # [gate; up] rows (each row's blocks stay together)
                        values[key] = torch.cat([p.flatten() for p in parts])
                    else:  # per query group: its query heads' rows, its key rows, its value rows
                        q, k, v = (p.reshape(groups, -1) for p in parts)
                        assert q.shape[1] == k.shape[1] * heads // groups  # rows x blocks per head alike
                        values[key] = torch.cat([q, k, v], dim=1).flatten()
    return values


def _saved_quantizer_values(ckpt: Path, tmp: Path) -> dict[str, torch.Tensor]:
    """Every quantizer value a quantize.py checkpoint holds, whole (dist_checkpointing saves global tensors at any
    TP), read with torch's own checkpoint reader."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    tracker = (ckpt / "latest_checkpointed_iteration.txt").read_text().strip()
    dcp_to_torch_save(ckpt / (tracker if tracker == "release" else f"iter_{int(tracker):07d}"), tmp / "state.pt")
    state = torch.load(tmp / "state.pt", weights_only=False)
    state = state.get("model", state)
    return {k: v.flatten() for k, v in state.items() if "_quantizer._" in k and k.startswith("decoder.")}


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("family", FAMILIES)
def test_fake_quantized_logits_equal_modelopt_on_transformers(out, family, fmt, tp, tmp_path):
    """FP8, INT8-SmoothQuant and INT4 blocks (weight-only): the same model. Two checks, because exact logits
    are not a property of the product: calibration reduces activations in the layout's order (TP2's partial
    sums, another CPU's matmul blocking), so its values differ in the last bits (TP2 vs TP1: up to 1.1e-6
    relative), and a weight or activation that sits on a rounding boundary then moves one code; each such flip
    moves every later position's logits (measured: Qwen3 INT8-SQ calibrated at TP2 on an AVX512-FP16/AMX CPU,
    values up to 1.7e-6 apart, logits up to 4.8e-3, 0.033 of the quantization's own effect).
    1. Every quantizer value (amax, pre_quant_scale) = modelopt's, to 1e-5 relative: a scale 1% off, a row
       block in the wrong order or a missing quantizer is 1e-2 or more.
    2. The logits within FLIP_BOUND (0.1) of the quantization's own effect (relative RMS): a forward that
       quantizes the wrong tensor or skips a layer's quantizer moves them by 0.15 to 1.1 of it.
    INT4-AWQ: AWQ searches one activation scale per Megatron layer (q/k/v fused, gate/up fused; per TP shard) and
    one per projection in transformers, so the models differ by design; bound: the difference is under 75% of what
    the quantization itself changes (measured: 0.58 to 0.62)."""
    plain, reference, reference_values = _reference(str(out / "models" / family), fmt)
    ours = torch.load(out / "logits" / f"{family}_{fmt}_tp{tp}.pt")[..., : reference.shape[-1]]
    effect = _rel_rms(reference, plain)
    assert effect > 1e-3, f"the quantization changed nothing (relative RMS {effect:.2e})"
    if fmt == "int4_awq":
        assert _rel_rms(ours, reference) < AWQ_BOUND * effect, (_rel_rms(ours, reference), effect)
        return
    enabled = json.loads((out / "logits" / f"{family}_{fmt}_tp{tp}.quantizers.json").read_text())
    assert sorted(q for q in enabled if q.startswith("decoder.")) == sorted(
        {k.rsplit(".", 1)[0] for k in reference_values}), "the quantizers applied are not modelopt's"
    values = _saved_quantizer_values(out / "quant" / f"{family}_{fmt}_tp{tp}", tmp_path)
    assert sorted(values) == sorted(reference_values)
    for key, value in values.items():
        torch.testing.assert_close(value.float(), reference_values[key].float(), rtol=VALUES_RTOL, atol=0,
                                   msg=lambda m, key=key: f"{key}: {m}")
    assert _rel_rms(ours, reference) <= FLIP_BOUND * effect, (_rel_rms(ours, reference), effect)


def _tp_share(key: str, value: torch.Tensor, rows: int, rank: int, tp: int) -> torch.Tensor:
    """Rank `rank`'s share at TP=`tp` of a quantizer value saved whole, from Megatron's parallel layouts (written
    out here, not by the project's sharding code). Column-parallel layers (linear_qkv, linear_fc1) split their
    output rows: a per-row weight value follows the rows (linear_qkv's query groups are contiguous; linear_fc1
    holds each rank's share of the gate rows, then of the up rows); their input (and its pre_quant_scale) is
    whole. Row-parallel layers (linear_proj, linear_fc2) split their input: pre_quant_scale and per-block weight
    values follow it; a per-channel weight value spans the whole input, so every rank holds it all."""
    column = "linear_qkv." in key or "linear_fc1." in key
    if key.endswith("_pre_quant_scale"):
        return value if column else value.chunk(tp)[rank]
    if value.numel() == 1 or "input_quantizer" in key:
        return value
    per_row = value.reshape(rows, -1)
    if not column:
        return per_row.chunk(tp, dim=1)[rank].flatten() if per_row.shape[1] > 1 else value
    if "linear_fc1." in key:
        gate, up = per_row.chunk(2)
        return torch.cat([gate.chunk(tp)[rank], up.chunk(tp)[rank]]).flatten()
    return per_row.chunk(tp)[rank].flatten()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_quantized_checkpoint_reloads_at_another_tp(out, family, fmt, tmp_path):
    """Saved at TP=1, loaded at TP=2: each rank holds exactly its share of every quantizer value (per-row values
    of SwiGLU's fc1 included: resharded as one block, they moved the logits by up to 0.021), and the logits are
    the TP=1 model's. Those can differ where an activation sits on a rounding boundary, since TP2 sums in
    another order (1e-7 relative in fp32) and one FP8 code is 1/16 of its value: measured up to 0.0038 of the
    quantization's own effect (Llama-3 INT8-SQ on AVX2 kernels), 0.033 with FP8 scales 1% larger; bound
    FLIP_BOUND. The values check is exact: loading only moves them."""
    cfg = json.loads((out / "models" / family / "config.json").read_text())
    rows = {"linear_qkv": (cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"]) * cfg["head_dim"],
            "linear_fc1": 2 * cfg["intermediate_size"], "linear_proj": cfg["hidden_size"],
            "linear_fc2": cfg["hidden_size"]}
    saved_values = _saved_quantizer_values(out / "quant" / f"{family}_{fmt}_tp1", tmp_path)
    for rank in range(2):
        loaded = torch.load(out / "logits" / f"{family}_{fmt}_tp1_at_tp2.rank{rank}.values.pt")
        assert sorted(k for k in loaded if k.startswith("decoder.")) == sorted(saved_values)
        for key, value in saved_values.items():
            layer = next(name for name in rows if f".{name}." in key)
            want = _tp_share(key, value, rows[layer], rank, 2)
            assert torch.equal(loaded[key].flatten(), want), (rank, key, loaded[key].shape, want.shape)
    plain, reference, _ = _reference(str(out / "models" / family), fmt)
    saved = torch.load(out / "logits" / f"{family}_{fmt}_tp1.pt")[..., : reference.shape[-1]]
    resharded = torch.load(out / "logits" / f"{family}_{fmt}_tp1_at_tp2.pt")[..., : reference.shape[-1]]
    effect = _rel_rms(reference, plain)
    assert _rel_rms(resharded, saved) <= FLIP_BOUND * effect, (_rel_rms(resharded, saved), effect)


def _unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """modelopt's INT4 layout: uint8 [out/2, in], row 2r in the low nibble and row 2r+1 in the high one, two's
    complement."""
    nibbles = torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1, packed.shape[1]).to(torch.int16)
    return torch.where(nibbles >= 8, nibbles - 16, nibbles).float()


def _dequantize(files: dict, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, one quantization step per element) of linear `name` of an exported checkpoint, by its format."""
    weight, scale = files[f"{name}.weight"], files[f"{name}.weight_scale"].float()
    if weight.dtype == torch.float8_e4m3fn:  # per-tensor FP8
        return weight.float() * scale, None
    if weight.dtype == torch.int8:  # per-channel INT8
        return weight.float() * scale[:, None], scale[:, None].expand(weight.shape)
    codes = _unpack_int4(weight)  # INT4 blocks of 128 inputs: one scale per row and block
    step = scale.repeat_interleave(codes.shape[1] // scale.shape[1], dim=1)
    values = codes * step
    if f"{name}.weight_scale_2" in files:  # W4A8: the INT4 values are held in FP8 with a per-tensor scale
        scale2 = files[f"{name}.weight_scale_2"].float()
        values = (values / scale2).to(torch.float8_e4m3fn).float() * scale2
    return values, step


_INPUT_NORMS = {"self_attn.q_proj": ("input_layernorm", "self_attention.linear_qkv"),
                "mlp.gate_proj": ("post_attention_layernorm", "mlp.linear_fc1"),
                "self_attn.o_proj": (None, "self_attention.linear_proj"), "mlp.down_proj": (None, "mlp.linear_fc2")}


@pytest.mark.parametrize(("family", "fmt"), EXPORT_FORMATS)
def test_the_export_dequantizes_to_the_fake_quantized_weights(out, family, fmt):
    """export.sh's directory read back: every quantized linear's codes x scales are the Megatron model's own
    fake-quantized weight. FP8 (Megatron exporter): the codes bitwise, the values within fp32's rounding of code
    x scale. INT4/INT8 (Hugging Face exporter, which writes bf16): the fake-quantized bf16-rounded weights' codes,
    but for at most FLIPPED_CODES of them one code off (a rounding boundary, below); against the fp32 weights each
    value is within 1.5 steps of its block or channel (a weight that
    rounds to bf16 across a rounding boundary moves one code; FP8's second rounding of W4A8 adds half), on under
    1% of the 4-bit weights. AWQ/SmoothQuant's pre_quant_scale is kept as a tensor or folded into the norm
    before: either way norm x scale equals Megatron's, to bf16's rounding (3 roundings). The activations'
    input_scale is Megatron's range over the format's largest code; the model's generation defaults are kept."""
    from safetensors.torch import load_file

    export = out / f"export_{family}_{fmt}"
    files = {}
    for path in export.glob("*.safetensors"):
        files.update(load_file(path))
    fake = torch.load(out / f"fake_quant_{family}_{fmt}.pt")
    linears = [k[: -len(".weight_scale")] for k in files if k.endswith(".weight_scale")]
    if fmt in EXPORT_VARIANTS:  # q/k/v and layer 3 kept unquantized: their weights as they are, in bf16
        rest = ("self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
        assert sorted(linears) == sorted(f"model.layers.{i}.{p}" for i in range(3) for p in rest)
        kept = [f"model.layers.{i}.self_attn.{p}_proj" for i in range(4) for p in "qkv"]
        for name in kept + [f"model.layers.3.{p}" for p in rest]:
            assert torch.equal(files[f"{name}.weight"], fake["as_saved"][f"{name}.weight"].bfloat16()), name
    else:
        assert len(linears) == 4 * 7, sorted(linears)  # q k v o gate up down in each of the 4 layers
    flipped = codes = 0
    for name in linears:
        values, step = _dequantize(files, name)
        ours = fake["as_saved"][f"{name}.weight"].float()
        if step is None:
            scale = files[f"{name}.weight_scale"].float()
            assert torch.equal(files[f"{name}.weight"], (ours / scale).to(torch.float8_e4m3fn)), name
            torch.testing.assert_close(values, ours, rtol=2.4e-7, atol=0)
            continue
        # Against the fake-quantized bf16 weights, in codes: the exporter divides the same bf16 weight by the same
        # scale in another order of fp32 operations, so a quotient within fp32's rounding of a .5 boundary may
        # round the other way: at most one code, rarely (<= 2 x 127 x 2^-24 = 1.5e-5 of INT8 codes; measured
        # 3 of 393,216 on an AVX512-FP16/AMX CPU, 0 on others). A scale 1% off moves a fifth of the codes or more.
        off = (values - fake["bf16"][f"{name}.weight"].float()).abs() / step
        assert off.max().item() <= 1 + 1e-4, (name, off.max().item())
        flipped, codes = flipped + (off > 1e-4).sum().item(), codes + off.numel()
        moved = (values - ours).abs() / step
        assert moved.max().item() <= 1.5, (name, moved.max().item())
        if files[f"{name}.weight"].dtype == torch.uint8:
            assert (moved > 1e-3).float().mean().item() < 0.01, (name, (moved > 1e-3).float().mean().item())
    assert flipped <= FLIPPED_CODES * max(codes, 1), f"{flipped} of {codes} codes one off the fake-quantized weights"
    for i in range(4):
        for hf_name, (norm, megatron) in _INPUT_NORMS.items():
            prefix = f"model.layers.{i}"
            ours = fake["pqs"].get(f"decoder.layers.{i}.{megatron}.input_quantizer._pre_quant_scale")
            exported = files.get(f"{prefix}.{hf_name}.pre_quant_scale", torch.ones(())).float()
            if norm is not None:
                exported = exported * files[f"{prefix}.{norm}.weight"].float()
                ours = fake["as_saved"][f"{prefix}.{norm}.weight"] * (1 if ours is None else ours)
            elif ours is None:
                ours = torch.ones(())
            # bf16 (unit roundoff 2^-8) rounds the norm, the scale and, folded, their product
            torch.testing.assert_close(exported, ours.float(), rtol=3 * 2 ** -8, atol=1e-6)
            # the activations' range: input_scale = amax / the format's largest code (INT8 127, FP8 448)
            amax = fake["input_amax"].get(f"decoder.layers.{i}.{megatron}.input_quantizer._amax")
            if amax is not None:
                bound = 127 if EXPORT_ALGO[fmt].startswith("W8A8") else 448
                scale = files[f"{prefix}.{hf_name}.input_scale"].float().reshape(amax.shape)
                torch.testing.assert_close(scale * bound, amax.float(), rtol=1e-6, atol=0)
            else:
                assert f"{prefix}.{hf_name}.input_scale" not in files, (prefix, hf_name)
    algo = EXPORT_ALGO[fmt]
    assert json.loads((export / "hf_quant_config.json").read_text())["quantization"]["quant_algo"] == algo
    assert json.loads((export / "config.json").read_text())["quantization_config"]["quant_algo"] == algo
    assert (export / "tokenizer_config.json").is_file()
    source = json.loads((out / "models" / family / "generation_config.json").read_text())
    assert json.loads((export / "generation_config.json").read_text())["eos_token_id"] == source["eos_token_id"]


@pytest.mark.parametrize("fmt", QAT_FORMATS)
def test_qat_at_tp2_equals_tp1(out, fmt):
    """3 QAT steps from the same quantized checkpoint at TP1 and TP2. Step 1 has the same weights and quantizer
    values: only TP2's reduction order differs, and a fake-quantized activation on a rounding boundary may move one
    code (an FP8 code is 1/16 of its value): loss and grad norm within 1e-4 relative (measured up to 1.3e-5).
    Steps 2-3 start from weights one Adam update apart: Adam's first update is about lr x sign(gradient) for every
    weight, whatever the gradient's size, so a flip that changes a small gradient's sign moves that weight by
    2 x lr: loss within 2e-4 (measured up to 4.1e-5), grad norm within 5e-3 (measured up to 8.1e-4). INT8-SQ with
    fc1's per-row ranges resharded as one block moves step 1's grad norm by 8.8e-4 (loss 1.0e-4)."""
    tp1 = json.loads((out / "qat_tp1.json").read_text())[fmt]
    tp2 = json.loads((out / "qat_tp2.json").read_text())[fmt]
    assert len(tp1) == len(tp2) == 3
    for step, ((loss1, norm1), (loss2, norm2)) in enumerate(zip(tp1, tp2)):
        loss_tol, norm_tol = (1e-4, 1e-4) if step == 0 else (2e-4, 5e-3)
        assert loss2 == pytest.approx(loss1, rel=loss_tol) and norm2 == pytest.approx(norm1, rel=norm_tol), (
            step + 1, tp1, tp2)
    quant = out / "qat" / f"{fmt}_tp2" / "iter_0000003"
    assert (quant / "modelopt_state").is_dir()
    assert json.loads((quant / "quantization.json").read_text())["format"] == fmt


@pytest.mark.parametrize("kind", ["quantize", "qat"])
def test_a_quantized_save_writes_what_the_layout_module_lists(out, kind):
    """quantize's weights-only release/ and a QAT training checkpoint: the files on disk are names.py's list."""
    from megatron_sft.checkpointing.names import checkpoint_entries as listed

    ckpt = out / "quant" / "qwen3_fp8_tp1" / "release" if kind == "quantize" else \
        out / "qat" / "fp8_tp2" / "iter_0000003"
    assert checkpoint_entries(ckpt) == listed(training=kind == "qat", quantized=True)


def test_qat_resume_is_exact(out):
    runs = json.loads((out / "qat_resume.json").read_text())
    assert len(runs["straight"]) == 10 and len(runs["first5"]) == 5 and len(runs["resumed5"]) == 5
    assert runs["first5"] + runs["resumed5"] == runs["straight"], runs
