"""comcoco placement stage: a geometric prior by default, or a GracoNet checkpoint."""

# The methods ``comcoco.placement.place.place`` knows (here, so naming them imports nothing heavy).
PLACEMENT_METHODS: tuple[str, ...] = ("prior", "graconet")
