"""The default base image of every component (a compile-time setting, see pipeline.create_pipeline)."""

DEFAULT_IMAGE = "ghcr.io/cdanet/cdanet:0.1.0"
COMPONENT_KWARGS = {"base_image": DEFAULT_IMAGE, "install_kfp_package": False}
