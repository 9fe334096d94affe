"""Prefect flows: thin faces over comcoco stages."""
