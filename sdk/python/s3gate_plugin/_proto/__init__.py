"""Generated protobuf and gRPC modules (scripts/regenerate.sh). Do not edit."""
