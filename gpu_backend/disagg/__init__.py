"""Disaggregated serving: prefill and decode run on different instances, and a request's KV cache moves between them."""
