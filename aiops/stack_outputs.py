"""Moved: the stack's outputs are part of the stack contract in `aiops.stack` (StackOutputs)."""

from aiops.stack import outputs_path, read_outputs, write_outputs  # noqa: F401
