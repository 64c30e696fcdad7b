"""facerec: self-hosted face verification server."""
