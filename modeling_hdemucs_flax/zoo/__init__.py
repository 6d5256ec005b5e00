"""The model zoo: which models exist, how a `--model` value is loaded (the default-model chain, the Hub, local
folders), what a model is before it is loaded, and how a model is identified."""
