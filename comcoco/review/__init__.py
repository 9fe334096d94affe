"""comcoco review stage."""
