"""Instances of TP x PP ranks as processes: launch, the driver and its followers, health, recovery, routing."""
