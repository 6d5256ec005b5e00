"""The Demucs family in Flax: shared blocks (`common`), torchaudio's and demucs's HDemucs (`hdemucs`), demucs's
HTDemucs (`htdemucs`); each model beside its configuration and the converters of its published weights."""
