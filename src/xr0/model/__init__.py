"""Model: Qwen3-VL backbone -> VLMCache (per-layer K/V) -> DiT action expert, trained and sampled by flow matching."""
