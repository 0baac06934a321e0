"""The tiny-model fixtures: configs, weights, tokenizers and chat templates, checked after a save/reload."""

import importlib.util
import json
import pathlib
import time
import unicodedata

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from megatron_sft.tiny import FAMILIES, make_tiny_model, make_tiny_tokenizer

REPO = pathlib.Path(__file__).resolve().parents[2]
QWEN = ("qwen3", "qwen3_untied", "qwen2", "qwen3_moe", "nemotron_h", "nemotron_h_moe")  # Qwen's tokenizer kind
HYBRID = ("nemotron_h", "nemotron_h_moe")
GPT = tuple(f for f in FAMILIES if f not in HYBRID)
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>",
                 "</tool_call>", "<tool_response>", "</tool_response>")
LLAMA_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                  "<|finetune_right_pad_id|>")
TEXTS = (
    "Hello world, this is 12345 tokens!\n\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
    "Ünïcödé façade — 日本語のテキスト, 한국어, emoji 🤖🚀, Ελληνικά, math ∑x²",
    "  leading spaces\t\ttabs\r\nand trailing  ",
)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {f: make_tiny_model(f, root / f) for f in FAMILIES}


@pytest.fixture(scope="module")
def tokenizers(model_dirs):
    return {f: AutoTokenizer.from_pretrained(d) for f, d in model_dirs.items()}


def specials(family):
    return QWEN_SPECIALS if family in QWEN else LLAMA_SPECIALS


def render(tok, messages, **kw):
    return tok.apply_chat_template(messages, tokenize=False, **kw)


def test_unknown_family_lists_families(tmp_path):
    with pytest.raises(ValueError, match="qwen3_moe"):
        make_tiny_model("gpt2", tmp_path)
    with pytest.raises(ValueError, match="llama3"):
        make_tiny_tokenizer("mistral")


@pytest.mark.parametrize("family", FAMILIES)
def test_directory_is_a_normal_fp32_checkpoint(model_dirs, family):
    d = model_dirs[family]
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json"):
        assert (d / name).is_file(), name
    with safe_open(d / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    assert json.loads((d / "config.json").read_text())["dtype"] == "float32"


@pytest.mark.parametrize("family", FAMILIES)
def test_reloaded_model_runs(model_dirs, family):
    model, info = AutoModelForCausalLM.from_pretrained(model_dirs[family], output_loading_info=True)
    assert not any(info.values()), info
    assert model.dtype == torch.float32
    with torch.no_grad():
        # no cache: transformers 5.14.1's fails on NemotronH's MLP layers (KeyError 'mlp')
        logits = model(torch.tensor([[1, 50, 200, 439, 7]]), use_cache=False).logits
    assert logits.shape == (1, 5, 512)
    assert torch.isfinite(logits).all()
    norms = [p for n, p in model.named_parameters() if "norm" in n]
    assert norms and all(not torch.allclose(p, torch.ones_like(p)) for p in norms)
    biases = [p for n, p in model.named_parameters() if n.endswith(".bias")]
    assert all(p.abs().min() > 0 for p in biases)
    assert (len(biases) > 0) == (family in ("qwen2", *HYBRID))  # Qwen2's q/k/v, the Mamba layers' conv1d


@pytest.mark.parametrize("family", GPT)
def test_common_config_and_token_ids(model_dirs, tokenizers, family):
    cfg, tok = AutoConfig.from_pretrained(model_dirs[family]), tokenizers[family]
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 64, 8, 4)
    assert (cfg.vocab_size, cfg.max_position_embeddings, cfg.hidden_act) == (512, 2048, "silu")
    assert cfg.rms_norm_eps == (1e-5 if family == "llama3" else 1e-6)
    assert 400 <= len(tok) < cfg.vocab_size and cfg.vocab_size % 128 == 0
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (tok.bos_token_id, tok.eos_token_id,
                                                                       tok.pad_token_id)
    gen = json.loads((model_dirs[family] / "generation_config.json").read_text())
    stops = ("<|im_end|>", "<|endoftext|>") if family in QWEN else ("<|eot_id|>", "<|end_of_text|>")
    assert gen["eos_token_id"] == tok.convert_tokens_to_ids(list(stops))
    assert gen["pad_token_id"] == tok.pad_token_id and gen.get("bos_token_id") == tok.bos_token_id


def test_family_specific_config(model_dirs):
    cfg = {f: AutoConfig.from_pretrained(d) for f, d in model_dirs.items()}
    assert cfg["qwen3"].head_dim == 16 and cfg["qwen3"].tie_word_embeddings
    assert cfg["qwen3_untied"].head_dim == 16 and not cfg["qwen3_untied"].tie_word_embeddings
    assert cfg["qwen3"].rope_parameters["rope_theta"] == 1e6 and not cfg["qwen3"].attention_bias
    moe = cfg["qwen3_moe"]
    assert (moe.num_experts, moe.num_experts_per_tok, moe.moe_intermediate_size, moe.head_dim) == (4, 2, 32, 16)
    assert moe.norm_topk_prob and moe.mlp_only_layers == [] and moe.decoder_sparse_step == 1
    assert not moe.tie_word_embeddings and moe.router_aux_loss_coef == 0.001
    assert cfg["qwen2"].tie_word_embeddings and cfg["qwen2"].rope_parameters["rope_theta"] == 1e6
    llama = cfg["llama3"]
    assert llama.head_dim == 8 and llama.tie_word_embeddings and not llama.mlp_bias
    assert llama.rope_parameters == {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 8192}


def test_hybrid_config(model_dirs, tokenizers):
    """Nemotron-H's layer kinds, 2 Mamba groups (one per TP=2 rank) and a scan chunk shorter than the samples."""
    dense, moe = (AutoConfig.from_pretrained(model_dirs[f]) for f in HYBRID)
    assert (dense.hybrid_override_pattern, moe.hybrid_override_pattern) == ("M*M-", "M*ME")
    for cfg in (dense, moe):
        assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (64, 8, 4, 16)
        assert (cfg.mamba_num_heads, cfg.mamba_head_dim, cfg.n_groups, cfg.ssm_state_size) == (8, 16, 2, 16)
        assert (cfg.chunk_size, cfg.vocab_size, cfg.tie_word_embeddings) == (16, 512, False)
    assert (moe.n_routed_experts, moe.num_experts_per_tok) == (4, 2)
    tok = tokenizers["nemotron_h"]
    assert (dense.eos_token_id, dense.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)


def test_llama3_rope_scaling_is_applied(model_dirs):
    model = AutoModelForCausalLM.from_pretrained(model_dirs["llama3"])
    f = 1.0 / 500000.0 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    # Llama 3 scaling: wavelengths 2*pi/f of 6.3 and 167 (< 8192/4) are kept, 1.2e5 (> 8192) is divided by 32,
    # and 4443 lies in between, so it is interpolated with smooth = (8192/wavelength - 1) / (4 - 1).
    smooth = (8192 * f[2] / (2 * torch.pi) - 1) / 3
    expected = torch.stack([f[0], f[1], (1 - smooth) * f[2] / 32 + smooth * f[2], f[3] / 32])
    # transformers computes inv_freq in fp32 (7 significant digits); a wrong band or factor is off by > 10%
    assert torch.allclose(model.model.rotary_emb.inv_freq.double(), expected, rtol=1e-4)


def test_qwen3_moe_checkpoint_uses_per_expert_keys(model_dirs):
    with safe_open(model_dirs["qwen3_moe"] / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    for e in range(4):
        assert f"model.layers.3.mlp.experts.{e}.gate_proj.weight" in keys
    assert "model.layers.0.mlp.gate.weight" in keys and "lm_head.weight" in keys


def test_same_seed_same_weights(tmp_path):
    start = time.perf_counter()
    a = make_tiny_model("qwen3", tmp_path / "a", seed=3)
    assert time.perf_counter() - start < 2.0
    b = make_tiny_model("qwen3", tmp_path / "b", seed=3)
    c = make_tiny_model("qwen3", tmp_path / "c", seed=4)
    read = lambda d: (d / "model.safetensors").read_bytes()  # noqa: E731
    assert read(a) == read(b) != read(c)


def test_callers_rng_is_untouched(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_tiny_model("qwen2", tmp_path)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_special_tokens_are_single_ids(tokenizers, family):
    tok = tokenizers[family]
    ids = tok.convert_tokens_to_ids(list(specials(family)))
    assert len(set(ids)) == len(ids) and min(ids) >= 400 and max(ids) < len(tok)
    for s, i in zip(specials(family), ids):
        assert tok(s, add_special_tokens=False)["input_ids"] == [i]
        glued = tok(f"word{s}word {s}\n", add_special_tokens=False)["input_ids"]
        assert glued.count(i) == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_reloaded_tokenizer_matches_in_process_one(tokenizers, family):
    fresh, loaded = make_tiny_tokenizer(family), tokenizers[family]
    assert fresh.chat_template == loaded.chat_template
    assert (fresh.bos_token, fresh.eos_token, fresh.pad_token) == (loaded.bos_token, loaded.eos_token,
                                                                   loaded.pad_token)
    for text in TEXTS + specials(family):
        assert fresh(text)["input_ids"] == loaded(text)["input_ids"]


@pytest.mark.parametrize("family", FAMILIES)
def test_text_round_trips(tokenizers, family):
    tok = tokenizers[family]
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    # Like real Qwen, the Qwen tokenizers NFC-normalise; Llama 3 keeps the code points as given.
    decomposed = "cafe\u0301"
    ids = tok(decomposed, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == (unicodedata.normalize("NFC", decomposed) if family in QWEN else decomposed)


def test_tokenizer_adds_no_special_tokens_itself(tokenizers):
    for tok in tokenizers.values():
        assert tok("hello")["input_ids"] == tok("hello", add_special_tokens=False)["input_ids"]


def test_make_tiny_tokenizer_returns_independent_copies():
    a = make_tiny_tokenizer("qwen3")
    a.chat_template = "changed"
    a.add_tokens(["<extra>"])
    b = make_tiny_tokenizer("qwen3")
    assert b.chat_template != "changed" and "<extra>" not in b.get_vocab()


def test_cli_writes_all_families(tmp_path):
    spec = importlib.util.spec_from_file_location("make_tiny_model_cli", REPO / "tools" / "make_tiny_model.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["--all", "--out", str(tmp_path)]) == [tmp_path / f for f in FAMILIES]
    assert cli.main(["--family", "qwen2", "--out", str(tmp_path / "one")]) == [tmp_path / "one"]
    assert (tmp_path / "qwen3_moe" / "model.safetensors").is_file()


# ---- chat templates: expected strings written out by hand from the documented formats ----

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Bye!"},
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
TOOL_CHAT = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "",
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "sunny"},
    {"role": "tool", "content": "22C"},
    {"role": "assistant", "content": "Sunny, 22C."},
]
QWEN_TOOL_SYSTEM = (
    "# Tools\n\nYou may call one or more of the functions below to help with the user query.\n\n"
    "Function signatures are listed inside <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}\n</tools>\n\n'
    "To call a function, reply with a JSON object holding its name and arguments inside <tool_call></tool_call> "
    'XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)
QWEN_TOOL_TURNS = (
    "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
    "<|im_start|>assistant\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\n22C\n</tool_response><|im_end|>\n"
)


def test_qwen3_multi_turn_with_system(tokenizers):
    assert render(tokenizers["qwen3"], CHAT) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nBye!<|im_end|>\n"
    )


def test_qwen3_reasoning_kept_only_after_last_query(tokenizers):
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
        {"role": "user", "content": "times 3?"},
        {"role": "assistant", "content": "12", "reasoning_content": "\n4*3\n"},
    ]
    assert render(tokenizers["qwen3"], messages) == (
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\ntimes 3?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n4*3\n</think>\n\n12<|im_end|>\n"
    )


def test_qwen3_tool_round_trip_keeps_reasoning_of_the_agent_steps(tokenizers):
    messages = [dict(m) for m in TOOL_CHAT]
    messages[1]["reasoning_content"] = "need weather"
    messages[4]["content"] = "<think>got it</think>Sunny, 22C."
    assert render(tokenizers["qwen3"], messages, tools=TOOLS) == (
        "<|im_start|>system\n" + QWEN_TOOL_SYSTEM + "<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nneed weather\n</think>\n\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n"
        "<tool_response>\n22C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\ngot it\n</think>\n\nSunny, 22C.<|im_end|>\n"
    )


def test_qwen3_tools_merge_system_and_calls_follow_content(tokenizers):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Checking.",
         "tool_calls": [{"name": "get_weather", "arguments": '{"city": "Rome"}'}, {"name": "now", "arguments": {}}]},
    ]
    assert render(tokenizers["qwen3"], messages, tools=TOOLS) == (
        "<|im_start|>system\nBe brief.\n\n" + QWEN_TOOL_SYSTEM + "<|im_end|>\n"
        "<|im_start|>user\nWeather?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nChecking.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>\n<tool_call>\n'
        '{"name": "now", "arguments": {}}\n</tool_call><|im_end|>\n'
    )


@pytest.mark.parametrize("family", ("qwen3", "qwen3_moe", "qwen3_untied"))
def test_qwen3_generation_prompt(tokenizers, family):
    tok, user = tokenizers[family], [{"role": "user", "content": "Hi"}]
    assert render(tok, user, add_generation_prompt=True) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert render(tok, user, add_generation_prompt=True, enable_thinking=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_qwen2_default_system_and_tools(tokenizers):
    tok = tokenizers["qwen2"]
    assert render(tok, CHAT[1:3], add_generation_prompt=True) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render(tok, CHAT[:3]).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert render(tok, TOOL_CHAT, tools=TOOLS) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n"
        + QWEN_TOOL_SYSTEM + "<|im_end|>\n" + QWEN_TOOL_TURNS + "<|im_start|>assistant\nSunny, 22C.<|im_end|>\n"
    )


def test_llama3_headers_and_eot(tokenizers):
    tok = tokenizers["llama3"]
    text = render(tok, CHAT[:3], add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id


def test_llama3_tool_calls_and_ipython(tokenizers):
    assert render(tokenizers["llama3"], TOOL_CHAT) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWeather in Paris?<|eot_id|>"
        '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "get_weather", "parameters": {"city": "Paris"}}'
        "<|eot_id|><|start_header_id|>ipython<|end_header_id|>\n\nsunny<|eot_id|>"
        "<|start_header_id|>ipython<|end_header_id|>\n\n22C<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nSunny, 22C.<|eot_id|>"
    )


def test_rendered_chat_tokenizes_specials_as_single_ids(tokenizers):
    tok = tokenizers["qwen3"]
    ids = tok(render(tok, CHAT), add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 5
    assert ids.count(tok.eos_token_id) == 5
