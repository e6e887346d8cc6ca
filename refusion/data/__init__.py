"""Data: image files <-> arrays, tensor/numpy/PIL inputs, paired GT/LQ datasets, degradations, offline datasets.

- image_io      read_image / write_image / image_bit_depth, size limits, ImageReadError
- inputs        tensor, numpy or PIL inputs to a (B, C, H, W) batch and back
- paired        find_pairs, PairedImageDataset (aligned crops, flips, rotations, conditioning inputs)
- lens          bokeh lens information (EBB! meta.txt: source lens, target lens, disparity per image)
- degradations  seeded synthetic degradations and renderings (pure functions of image, rng and parameters)
- synthetic     build_dataset: paired folders from photographs bundled with installed packages

Nothing here imports training, inference, evaluation, official or cli.
"""
