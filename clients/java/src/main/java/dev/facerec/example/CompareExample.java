// facerec gRPC from Java: compare two photos, read the stored scan back, retry on overload after the server's
// hint. Compiles against the classes generated from proto/facerec/v1/face_recognition.proto (java_package
// dev.facerec.v1, one class per message) and grpc-java; see clients/java/README.md.
//
//   java -cp ... dev.facerec.example.CompareExample 127.0.0.1:50051 "$TOKEN" a.jpg b.jpg [reference]
package dev.facerec.example;

import com.google.protobuf.ByteString;
import dev.facerec.v1.CompareFacesRequest;
import dev.facerec.v1.CompareFacesResponse;
import dev.facerec.v1.FaceRecognitionGrpc;
import dev.facerec.v1.GetScanRequest;
import dev.facerec.v1.Scan;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.MetadataUtils;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;

public final class CompareExample {
  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
  // The server's stable error code and its retry hint travel as trailing metadata.
  private static final Metadata.Key<String> ERROR_CODE =
      Metadata.Key.of("facerec-error-code", Metadata.ASCII_STRING_MARSHALLER);
  private static final Metadata.Key<String> RETRY_AFTER_MS =
      Metadata.Key.of("facerec-retry-after-ms", Metadata.ASCII_STRING_MARSHALLER);
  private static final int MAX_RETRIES = 3;

  private CompareExample() {}

  public static void main(String[] args) throws Exception {
    if (args.length < 4) {
      System.err.println("usage: CompareExample HOST:PORT TOKEN IMAGE1 IMAGE2 [REFERENCE]");
      System.exit(2);
    }
    ManagedChannel channel =
        ManagedChannelBuilder.forTarget(args[0]).usePlaintext().maxInboundMessageSize(64 << 20).build();
    Metadata headers = new Metadata();
    headers.put(AUTHORIZATION, "Bearer " + args[1]);
    FaceRecognitionGrpc.FaceRecognitionBlockingStub stub =
        FaceRecognitionGrpc.newBlockingStub(channel)
            .withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers));
    CompareFacesRequest request =
        CompareFacesRequest.newBuilder()
            .setChannel("WEB")
            .setReference(args.length > 4 ? args[4] : "java-example")
            .setFile1(ByteString.copyFrom(Files.readAllBytes(Path.of(args[2]))))
            .setFile2(ByteString.copyFrom(Files.readAllBytes(Path.of(args[3]))))
            .build();
    int status = 0;
    try {
      CompareFacesResponse result = compare(stub, request);
      System.out.printf(
          "%s %s %.3f landmarks=%d%n",
          result.getId(),
          result.getCompareResult(),
          result.getCompareSimilarity(),
          result.getFace1().getLandmark68Count());
      Scan scan =
          stub.withDeadlineAfter(30, TimeUnit.SECONDS)
              .getScan(GetScanRequest.newBuilder().setId(result.getId()).build());
      System.out.printf("stored %s reference=%s%n", scan.getId(), scan.getReference());
    } catch (StatusRuntimeException e) {
      Metadata trailers = Status.trailersFromThrowable(e);
      String code = trailers == null ? null : trailers.get(ERROR_CODE);
      System.err.printf("%s %s: %s%n", e.getStatus().getCode(), code, e.getStatus().getDescription());
      status = 1;
    } finally {
      channel.shutdown().awaitTermination(5, TimeUnit.SECONDS);
    }
    System.exit(status);
  }

  /** CompareFaces, retried on RESOURCE_EXHAUSTED / UNAVAILABLE after the server's facerec-retry-after-ms. */
  static CompareFacesResponse compare(
      FaceRecognitionGrpc.FaceRecognitionBlockingStub stub, CompareFacesRequest request)
      throws InterruptedException {
    for (int attempt = 0; ; attempt++) {
      try {
        return stub.withDeadlineAfter(60, TimeUnit.SECONDS).compareFaces(request);
      } catch (StatusRuntimeException e) {
        Status.Code code = e.getStatus().getCode();
        Metadata trailers = Status.trailersFromThrowable(e);
        String hint = trailers == null ? null : trailers.get(RETRY_AFTER_MS);
        boolean retryable = code == Status.Code.RESOURCE_EXHAUSTED || code == Status.Code.UNAVAILABLE;
        if (!retryable || hint == null || attempt >= MAX_RETRIES) {
          throw e;
        }
        Thread.sleep(Long.parseLong(hint));
      }
    }
  }
}
