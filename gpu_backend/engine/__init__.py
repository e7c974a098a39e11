"""Engine bookkeeping and step loop: sampling params, sequences, KV blocks, scheduling, model runner."""
