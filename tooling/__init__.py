"""Test and benchmark tooling shared by tests/ and bench/ (not part of the server package): a `facerec serve`
child process on free ports, a local Triton server, and bounded waiting."""
