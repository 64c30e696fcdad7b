"""gRPC API: the FaceRecognition service (proto/facerec/v1) on grpc.aio, sharing the HTTP server's runtime."""

from server.api.grpc.server import GrpcServer, start_grpc_server
from server.api.grpc.servicer import SERVICE_NAME, FaceRecognitionServicer

__all__ = ["SERVICE_NAME", "FaceRecognitionServicer", "GrpcServer", "start_grpc_server"]
