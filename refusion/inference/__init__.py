"""Inference: turning degraded images into restored ones with a trained or imported model.

- pipeline     RefusionPipeline (diffusers), sde_sample, load_pipeline, sample
- posterior    sample_posterior(): K posterior samples with their mean and std in one call
- sample_chunks  K samples of a batch as network batches of chunks of samples, one generator per sample
- restoration  restore(): the regressors' one-call entry point, TLC
- ensemble     x8 self-ensemble (the 8 flips and 90-degree rotations) for restore and the SDE
- color_fix    colour fix of a result toward its input: adain (channel statistics), wavelet (low frequencies)
- loading      run / saved-pipeline / regressor folders, with checksum verification
- tiling       overlapped tiles with raised-cosine blending for any image -> image function
- precision    how networks run for inference: channels_last, the half path, NaN/Inf checks
- allocator    glibc malloc tuning for CPU inference and training
- export       ONNX export with dynamic batch/height/width, checked by ONNX Runtime
- processes    under accelerate launch: this process's share of a list, the results gathered in order
- threads      torch's default thread count and the OpenMP wait the `refusion` command sets (no torch import)

Never imports training.
"""
