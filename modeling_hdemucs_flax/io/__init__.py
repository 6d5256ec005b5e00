"""Audio and storage I/O: the only code that opens audio files (libsndfile, PyAV), temporaries that never leave
half-written files, object storage, and the read-ahead and decode-once helpers the separation streams through."""
