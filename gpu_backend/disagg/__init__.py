"""Disaggregated serving: prefill and decode run on different workers, and a request's KV cache moves between them."""
