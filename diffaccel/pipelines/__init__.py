"""Part A (SPEC): pretrained-model techniques over one denoiser interface.

* :mod:`.denoisers` — ``IFDenoiser``, ``IFSuperResDenoiser``, ``DiffusersDenoiser``, ``MNISTDenoiser``;
* :mod:`.loading` — ``load_if_stage``, prompt embeddings, images and masks;
* :mod:`.techniques` — forward, blur/one-step/iterative denoising, sampling, CFG, SDEdit,
  inpainting, img2img, visual anagrams, hybrids / factorized diffusion, stage-II upsampling;
* :mod:`.views`, :mod:`.factorizations`, :mod:`.animation` — anagram views, factorizations, view animations
  (GIFs and PNGs are written by :mod:`diffaccel.imageio`).
"""
from .animation import animate_view, FrameRecorder, make_gif
from .denoisers import (Denoiser, DenoiserOutput, DiffusersDenoiser, EncodedCond, IFDenoiser, IFSuperResDenoiser,
                        MNISTDenoiser)
from .factorizations import get_factorization
from .loading import encode_prompts, load_if_stage, load_image, load_mask, load_prompt_embeds, save_prompt_embeds
from .techniques import (DenoiseResult, blur_denoise, factorized, forward, hybrid, img2img, inference_timesteps,
                         inpaint, iterative_denoise, iterative_denoise_cfg, one_step_denoise, sample, sdedit,
                         strided_timesteps, upsample_stage2, visual_anagram)
from .views import get_view, list_views

__all__ = [
    "Denoiser", "DenoiserOutput", "DiffusersDenoiser", "EncodedCond", "IFDenoiser", "IFSuperResDenoiser",
    "MNISTDenoiser", "load_if_stage", "load_prompt_embeds", "save_prompt_embeds", "encode_prompts", "load_image",
    "load_mask", "DenoiseResult", "forward", "blur_denoise", "one_step_denoise", "strided_timesteps",
    "inference_timesteps", "iterative_denoise", "iterative_denoise_cfg", "sample", "sdedit", "img2img", "inpaint",
    "visual_anagram", "hybrid", "factorized", "upsample_stage2", "make_gif", "animate_view",
    "FrameRecorder", "get_view", "list_views", "get_factorization",
]
