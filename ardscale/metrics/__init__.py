"""Quality metrics: PSNR/SSIM of reconstructions, Fréchet distances of feature sets (FVD/FID)."""
from .frechet import feature_stats, frechet_distance, frechet_from_stats
from .image import per_frame_motion, psnr, ssim

__all__ = ["feature_stats", "frechet_distance", "frechet_from_stats", "per_frame_motion", "psnr", "ssim"]
