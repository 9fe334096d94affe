"""comcoco placement stage."""
