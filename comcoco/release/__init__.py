"""comcoco release stage."""
