"""comcoco sources stage."""
