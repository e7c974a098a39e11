"""Process groups and collectives: every layer asks here for its tensor-parallel rank and size."""
