"""Engines: one module per backend library, loaded lazily by the engine manager."""
