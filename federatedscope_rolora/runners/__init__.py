"""See the package docstring of federatedscope_rolora."""
