"""Blocks shared by the family: torch-faithful layers, the hybrid encoder/decoder layers, STFT/iSTFT."""
