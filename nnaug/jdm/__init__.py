"""JDM, the joint diffusion model: one pixel-space DDPM over image channels and mask channels stacked.

``model`` builds the diffusers ``UNet2DModel`` and the training objective, ``sampling`` draws
pairs (joint) or images for given masks (mask-conditioned) with any diffusers scheduler.
"""
