"""Side-by-side benchmarks of the checkpoint archive against its peers (``make bench``)."""
