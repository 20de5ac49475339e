"""Pure Spark transformations of the batch layer: ``DataFrame -> DataFrame``, no I/O."""
