"""Fine-tuning and training models of the family on multitrack folders (`hdemucs-flax train`, `Trainer`): demucs's
recipe (augmentations, L1 on waveforms, Adam) through optax, data-parallel over local devices, exact resumption."""
