"""Hybrid Demucs (v3): torchaudio's HDemucs and demucs's own, one configuration, plan and module."""
