"""Files and formats: atomic writes, our checkpoints, foreign checkpoints (EDM/EDM2 pickles), fetching with sha256,
PNG images, pretrained weight files."""
