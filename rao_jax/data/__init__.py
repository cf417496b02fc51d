"""Datasets of root tasks: tfds/array_record builders, grain pipelines and the build CLI."""
