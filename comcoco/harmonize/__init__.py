"""comcoco harmonize stage: Harmonizer's six white-box filters, fitted per image or predicted by a network."""

# The methods ``comcoco.harmonize.fit.harmonize`` knows (here, so naming them imports no torch).
HARMONIZE_METHODS: tuple[str, ...] = ("fit", "reinhard", "none", "network")
