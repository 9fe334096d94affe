"""comcoco harmonize stage."""
