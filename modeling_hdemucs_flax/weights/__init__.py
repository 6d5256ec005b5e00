"""Reading and fetching weight files, with no model code: the torch-free readers (torch state dicts; demucs's
`.th` packages, Hub safetensors and bag files, read as data), the Hub loader with one-line errors, checked
downloads and the network probe."""
