"""Separation: the schedule (`Separator`: chunks, batches, overlap-add), file output, batch-size tuning."""
