"""Generated from proto/rstitch/v1 by scripts/gen_proto.sh; do not edit."""
