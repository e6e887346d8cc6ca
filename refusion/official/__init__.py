"""Official checkpoints and option files: safe reading, architecture detection, import to ready folders."""
