"""HTDemucs (Hybrid Transformer Demucs, demucs v4) in Flax: config, layer plan, cross-domain transformer, model."""
