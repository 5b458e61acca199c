"""The shapes world: a procedural world of coloured shapes with captions, and the measures that
check an image against the scene that was asked for."""
