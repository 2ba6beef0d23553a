"""Image preprocessing, below the model and the data layers: one home for what turns a picture into the
pixels the vision tower sees.

- `llava.images.process`: the original's helpers (`process_images` by image_aspect_ratio square / pad /
  anyres, `expand2square`, the anyres tiling), also importable from `llava.mm_utils`.
- `llava.images.transform`: the training loader's one-pass `ImageTransform` (the same pixels as
  `process_images` for square / pad, faster) and the uint8 normalisation table the vision tower applies
  on its device (`normalisation_table`, `normalise_levels`).
"""
