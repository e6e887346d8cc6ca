"""Inference: turning degraded images into restored ones with a trained or imported model.

- model        load_model(): every model a user brings -> LoadedModel (kind, networks, capabilities, defaults)
- settings     RestoreSettings: the settings of one restoration, validated once
- restorer     restore_image(): the one restore path of the library, the command line, the app and evaluation
- network_calls  how a noise network is called, one wrapper per kind of conditioning
- pipeline     RefusionPipeline (diffusers), the reverse-SDE loop sde_sample, load_pipeline
- sampling     sample(): the SDE's one-call entry point
- posterior    sample_posterior(): K posterior samples with their mean and std in one call
- sample_chunks  K samples of a batch as network batches of chunks of samples, one generator per sample
- restoration  restore(): the regressors' one-call entry point
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
