#!/usr/bin/env python3
"""A gRPC client that is not toxaudit's own: lists the services of a running
toxaudit through server reflection, checks grpc.health.v1, and calls
toxaudit.v1.Reporting/GetReport with a bearer token, building the messages
from the descriptors the server reflects (no generated code).

Prints one line per service (`service NAME`), `health SERVING` (or the
status), and `report <json>`. Needs grpcio, grpcio-reflection and
grpcio-health-checking (`make deps` installs them).

    scripts/grpc_probe.py --target 127.0.0.1:50051 --token "$TOKEN" [--scope all]
"""

import argparse
import sys

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT of the gRPC server")
    parser.add_argument("--token", required=True, help="bearer token (toxaudit token issue)")
    parser.add_argument("--scope", default="all", help="report scope: all or a centre")
    arguments = parser.parse_args()

    metadata = (("authorization", f"Bearer {arguments.token}"),)
    with grpc.insecure_channel(arguments.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        for service in sorted(database.get_services()):
            print(f"service {service}")

        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        print(f"health {health_pb2.HealthCheckResponse.ServingStatus.Name(status.status)}")

        pool = descriptor_pool.DescriptorPool(database)
        method = pool.FindServiceByName("toxaudit.v1.Reporting").methods_by_name["GetReport"]
        request_class = GetMessageClass(method.input_type)
        response_class = GetMessageClass(method.output_type)
        get_report = channel.unary_unary(
            "/toxaudit.v1.Reporting/GetReport",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        report = get_report(request_class(scope=arguments.scope), metadata=metadata, timeout=30)
        print(f"report {report.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
