"""Simulators and benchmarks: MetaWorld, LIBERO, and the CALVIN / SimplerEnv protocol adapters."""
