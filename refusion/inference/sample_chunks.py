"""Several posterior samples of the same images: one network batch per chunk of samples.

K samples of a (B, C, H, W) batch run as batches of ``chunk * B`` images (the images repeated
``chunk`` times, sample-major: sample k of image b is row ``k * B + b``). Every sample has its own
generator, and a generator draws its sample's noise for the whole B-image batch in one call
(refusion.schedulers.ir_sde.GeneratorGroups), exactly as ``refusion.sample(..., generator=g)``
draws it. So sample k is the same whatever the chunk size, and the same as a separate
``refusion.sample`` call with sample k's generator (up to float rounding of a larger network batch).

Generators of a K-sample call (``sample_generators``):
- ``None``: K generators on the images' device, seeded with K integers drawn from torch's global
  RNG (``torch.manual_seed`` makes the call reproducible);
- one ``torch.Generator``: K generators on its device seeded with K integers drawn from it (one
  seed reproduces the K samples);
- a list of K entries, one per sample: entry k is what ``refusion.sample`` takes as ``generator=``
  for the batch: a generator, or a list of B generators (one per image). Mixing the two forms, or
  a list of any other length, is refused.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from refusion.schedulers.ir_sde import GeneratorGroups

__all__ = ["AUTO_CHUNK_PIXELS", "AUTO_CHUNK_PIXELS_CPU", "check_num_samples", "check_stochastic", "sample_generators",
           "auto_chunk_size", "sample_in_chunks"]

# chunk_size=None: as many samples per network batch as keep the network's input (chunk * B images of
# the tile or the whole image) under this many pixels. On GPUs a large batch fills the device. On the
# CPU a batch pays only while its activations stay in the caches: with the quickstart network (2
# threads) a batch of 8 samples of 128^2 ran 1.42x faster per sample than separate calls, of 256^2
# 7% slower (docs/performance.md, `refusion benchmark posterior`).
AUTO_CHUNK_PIXELS = 1024 * 1024
AUTO_CHUNK_PIXELS_CPU = 256 * 256
# the last seed torch.Generator.manual_seed takes comfortably on every device
_SEED_RANGE = 2 ** 62


def check_num_samples(num_samples: Any) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1 (the number of posterior samples per image), "
                         f"got {num_samples!r}")
    return num_samples


def check_stochastic(scheduler, num_samples: int) -> None:
    """Refuse K > 1 samples where they would all be equal and the std zero: a sampler that draws no noise
    from a start that draws none (the DenoisingSDE's ode, or posterior with eta = 0). The IR-SDE's
    deterministic samplers still vary through their random start x_T (``samples_vary``)."""
    if num_samples > 1 and not scheduler.samples_vary:
        cfg = scheduler.config
        which = f"sampler={cfg.sampler!r}" + (f" with eta={cfg.eta}" if cfg.sampler == "posterior" else "")
        raise ValueError(f"num_samples={num_samples} with {type(scheduler).__name__} and the deterministic {which}: "
                         f"it starts from the degraded image itself and draws no noise, so every sample would be "
                         f"the same image and the std zero. Use sampler='sde' or 'posterior' with eta > 0, or "
                         f"num_samples=1")


def _seeded(seeds: torch.Tensor, device: torch.device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds.tolist()]


def sample_generators(generator: Any, num_samples: int, batch: int, device: torch.device) -> list:
    """One entry per sample: a torch.Generator, or a list of ``batch`` generators (see the module doc)."""
    if generator is None:
        return _seeded(torch.randint(0, _SEED_RANGE, (num_samples,)), torch.device(device))
    if isinstance(generator, torch.Generator):
        seeds = torch.randint(0, _SEED_RANGE, (num_samples,), generator=generator, device=generator.device)
        return _seeded(seeds, generator.device)
    if not isinstance(generator, (list, tuple)):
        raise TypeError(f"generator must be None, a torch.Generator or a list of {num_samples} (one per sample), "
                        f"got {type(generator).__name__}")
    if len(generator) != num_samples:
        per_image = " (with num_samples > 1 a list holds one entry per sample, not one per image)" \
            if len(generator) == batch else ""
        raise ValueError(f"generator is a list of {len(generator)} entries but num_samples={num_samples}: pass one "
                         f"generator per sample{per_image}, or one generator to seed them all")
    single = [isinstance(g, torch.Generator) for g in generator]
    if all(single):
        return list(generator)
    per_image = [isinstance(g, (list, tuple)) and len(g) == batch and all(isinstance(x, torch.Generator) for x in g)
                 for g in generator]
    if all(per_image):
        return [list(g) for g in generator]
    forms = [f"list of {len(g)}" if isinstance(g, (list, tuple)) else type(g).__name__ for g in generator]
    raise ValueError(f"generator: entry k of the list is sample k's generator, either one torch.Generator or a "
                     f"list of {batch} (one per image), the same form for every sample; got {forms}")


def auto_chunk_size(num_samples: int, batch: int, height: int, width: int, tile: int | None,
                    device: torch.device | str = "cpu") -> int:
    """Samples per network batch when chunk_size is None: the network's input (a tile or the whole
    image, times ``batch`` images) times the chunk stays under AUTO_CHUNK_PIXELS_CPU on the CPU,
    AUTO_CHUNK_PIXELS on other devices; at least 1."""
    area = height * width if not tile else min(height, tile) * min(width, tile)
    budget = AUTO_CHUNK_PIXELS_CPU if torch.device(device).type == "cpu" else AUTO_CHUNK_PIXELS
    return max(1, min(num_samples, budget // max(1, batch * area)))


def _check_chunk_size(chunk_size: Any) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None (automatic) or an int >= 1 (posterior samples per network "
                         f"batch), got {chunk_size!r}")


def _chunk_generator(entries: Sequence) -> GeneratorGroups | list:
    if isinstance(entries[0], torch.Generator):
        return GeneratorGroups(tuple(entries))
    return [g for per_image in entries for g in per_image]


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("out of memory", "can't allocate memory", "not enough memory",
                                   "failed to allocate"))


def _memory_advice(exc: BaseException, chunk: int, batch: int, shape: tuple, tile: int | None) -> BaseException:
    what = f"{chunk} posterior sample(s) of {batch} image(s) of {shape[-2]}x{shape[-1]} in one network batch"
    if chunk > 1:
        advice = f"pass a smaller chunk_size (e.g. chunk_size={max(1, chunk // 2)})"
    else:
        advice = "chunk_size is already 1"
    tile_advice = f"a smaller tile_size than {tile}" if tile else "a tile_size (e.g. 512)"
    message = f"out of memory running {what}: {advice}, or {tile_advice}. ({type(exc).__name__}: {exc})"
    try:
        return type(exc)(message)
    except TypeError:             # an exception class that takes other arguments: keep its type's family
        return MemoryError(message)


def sample_in_chunks(run: Callable[..., torch.Tensor], per_image: Sequence[torch.Tensor | None], *,
                     entries: list, chunk_size: int | None, tile: int | None) -> torch.Tensor:
    """(K, B, ...) samples: ``run(*per_image repeated n times, generator=...)`` per chunk of n samples.

    ``per_image``: the (B, ...) tensors the SDE needs per image (the first is mu; None passes through);
    ``entries``: sample_generators' K entries; ``tile``: the network's tile on mu's grid (or None).
    A chunk that runs out of memory re-raises the error with what to change.
    """
    _check_chunk_size(chunk_size)
    mu = per_image[0]
    batch, num_samples = mu.shape[0], len(entries)
    chunk = chunk_size or auto_chunk_size(num_samples, batch, mu.shape[-2], mu.shape[-1], tile, mu.device)
    outputs = []
    for start in range(0, num_samples, chunk):
        part = entries[start:start + chunk]
        repeated = [None if t is None else t.repeat(len(part), *([1] * (t.dim() - 1))) for t in per_image]
        try:
            out = run(*repeated, generator=_chunk_generator(part))
        except (MemoryError, RuntimeError) as exc:
            if not _is_out_of_memory(exc):
                raise
            raise _memory_advice(exc, len(part), batch, tuple(mu.shape), tile) from exc
        outputs.append(out.reshape(len(part), batch, *out.shape[1:]))
    return torch.cat(outputs)
