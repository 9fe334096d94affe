"""comcoco text stage."""
