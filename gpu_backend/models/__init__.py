"""Model definitions, one file per family; registry.py maps a checkpoint's architecture to its class."""
