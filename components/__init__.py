"""Kubeflow Pipelines components: thin adapters around the cdanet library."""
