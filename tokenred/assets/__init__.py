"""Files shipped with tokenred: the embedded ``tiny`` checkpoint (config, tokenizer)."""
