"""Wire layers: HTTP (Litestar) and gRPC, both thin over server.service."""
