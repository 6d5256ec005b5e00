"""Reading weight files, with no model code: demucs's own checkpoints (`.th` packages, the Hub's safetensors and
bag yamls) read as data without torch and without importing or calling anything a file names
(`demucs_checkpoint`), and the released demucs models described as data (`demucs_registry`)."""
