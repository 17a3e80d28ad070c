"""Model: Qwen3-VL backbone -> Prefix (per-layer K/V) -> DiT action expert, trained and sampled by flow matching."""
