"""comcoco matching stage."""
