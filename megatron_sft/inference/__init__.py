"""Generation and MMLU on Megatron model chunks at any TP/PP/EP layout.

    generate.generate(chunks, prompt_ids, GenerationOptions(...)) -> [Generation]   KV-cached decoding
    mmlu.evaluate(chunks, tokenizer, test, dev, MMLUOptions(...)) -> report        letter-logit scoring
    run.generate_main(args) / run.mmlu_main(args)                                  what examples/ run
    logits.forward_logits(chunks, tokens, ...)                                     one forward, any layout

Submodules are imported explicitly: this package import stays free of torch and Megatron.
"""
