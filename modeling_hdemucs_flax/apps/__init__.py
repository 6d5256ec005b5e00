"""The applications: the command line and its commands, the HTTP API, the dataset engine (local and Ray)."""
