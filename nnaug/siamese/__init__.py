"""Siamese-Diffusion (Qiu et al., CVPR 2025): a mask-conditioned ControlNet generator.

Modules (import them directly; this package file stays import-light):

- :mod:`nnaug.siamese.dhi` -- the Dense Hint Input that replaces ControlNet's hint encoder.
- :mod:`nnaug.siamese.backbone` -- :class:`SiameseComponents`, :func:`build_pixel`,
  :func:`load_sd15`, hints, saving and loading.
- :mod:`nnaug.siamese.objective` -- the training loss (L0..L3) and :func:`trainable_parameters`.
- :mod:`nnaug.siamese.sampling` -- :func:`sample_images` (Mask-Diffusion only).
"""
