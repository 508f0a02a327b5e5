"""nnaug: diffusion-generated image-mask pairs for nnU-Net.

Kept import-light on purpose: ``nnaug_torchvision_compat.pth`` imports a submodule of this
package at every interpreter start, so nothing heavy (torch, nnunetv2) is imported here.
"""

__version__ = "0.1.0"
