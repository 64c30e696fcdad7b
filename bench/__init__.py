"""facerec benchmarks: throughput, latency and accuracy tools (not tests)."""
