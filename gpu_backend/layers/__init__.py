"""Model building blocks; tensor parallelism lives here so model files read as single-device code."""
