"""The sparse-diff contract: file format, validation, composition math, blob store, registry."""
