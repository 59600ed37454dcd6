"""Generated from proto/rstitch by scripts/gen_proto.sh; do not edit."""
