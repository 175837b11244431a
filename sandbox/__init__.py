"""Test and demo infrastructure that is not product code (see docs/DESIGN.md)."""
