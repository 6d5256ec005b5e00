"""Builds a model from a torch.save'd checkpoint (argv: checkpoint, config folder) and runs it, then says
whether torch was imported (the caller sets USE_TORCH=0 so transformers does not import it on its own)."""

import sys

import numpy as np

from modeling_hdemucs_flax import FlaxHDemucs, HDemucsConfig

checkpoint, config_dir = sys.argv[1:]
model = FlaxHDemucs.from_torchaudio(checkpoint, HDemucsConfig.from_pretrained(config_dir))
model(np.zeros((1, 2, 3000), np.float32))
print("torch imported:", "torch" in sys.modules)
