"""Images as discrete tokens, the way unified autoregressive VLMs (Liquid, Chameleon, Janus, Emu3) see them.

An [`ImageCodec`] turns an image into a fixed number of codebook indices and writes them as text::

    <boi><img_3><img_17>...<img_5><eoi>

one `<img_i>` token per code, between begin/end-of-image markers, with no spaces. Text and image tokens then mix freely
in states, actions and prompts, and TRL's text pipeline (tokenization, SFT, GRPO, the partner's scoring) carries them
unchanged once the codec's tokens are added to the tokenizer with [`ImageCodec.add_to_tokenizer`]:

* added tokens are split out of the text *before* the tokenizer's pre-tokenization and model, so
  `"<boi><img_1><img_2><eoi>"` (no spaces) is exactly those four tokens, with any tokenizer (word-level, BPE, ...),
  before and after `save_pretrained` / `AutoTokenizer.from_pretrained`;
* they are added as *special* tokens by default (never split, never normalised, as VLM tokenizers do); decoding with
  `skip_special_tokens=True` therefore drops them, so generated images are read back from token ids
  ([`ImageCodec.ids_to_text`]) rather than from decoded text (this is what `trl_swirl.visual` and the SWIRL trainer's
  `completion_decoder` hook do). `add_to_tokenizer(tokenizer, special_tokens=False)` adds them as ordinary added tokens
  instead, which a decode keeps (separated by the tokenizer decoder's spaces, which [`ImageCodec.decode`] accepts).

Two codecs:

* [`PaletteCodec`]: no learned weights, deterministic. The image is resized to `image_size`, cut into a grid of
  `patch_size` x `patch_size` patches, and each patch becomes the index of the palette colour nearest to its mean
  colour; decoding paints the patches. The round trip is exact on images it can represent (patch-constant, palette
  colours), which is what the built-in visual worlds render (`trl_swirl.envs.visual`).
* [`VQCodec`]: wraps a VQ-VAE from transformers (`JanusVQVAE` or `Emu3VQVAE`): its `encode` gives the codes, its
  `decode` the pixels. Build one from a pretrained checkpoint (`get_codec("vq", model=...)`) or, for tests, from a
  tiny randomly initialised config (`VQCodec.tiny()`).

Pillow is needed for images (`pip install Pillow`); the VQ codec also needs torch.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage


__all__ = [
    "DEFAULT_PALETTE",
    "DEFAULT_PALETTE_NAMES",
    "ImageCodec",
    "PaletteCodec",
    "VQCodec",
    "get_codec",
]

_TOKEN_RE = re.compile(r"<[^<>\s]+>")

# 16 colours: the 8 corners of the RGB cube and the 8 corners of the inner cube {64, 191}^3. The set is closed under
# inversion (255 - c) and under permutations of the channels, so the colour edits of the photo world stay exact.
DEFAULT_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255),
    (64, 64, 64), (191, 191, 191), (191, 64, 64), (64, 191, 64), (64, 64, 191), (191, 191, 64), (64, 191, 191),
    (191, 64, 191),
)
DEFAULT_PALETTE_NAMES: tuple[str, ...] = (
    "black", "white", "red", "green", "blue", "yellow", "cyan", "magenta",
    "darkgray", "lightgray", "brick", "moss", "navy", "olive", "teal", "purple",
)


def _pil():
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - Pillow ships with the visual extra
        raise ImportError("Image codecs need Pillow: `pip install Pillow`.") from err
    return Image


class ImageCodec(abc.ABC):
    """An image <-> fixed-length token sequence codec, written as text between `<boi>` and `<eoi>`.

    Subclasses set `image_size` (width, height), `num_tokens` and `codebook_size`, and implement
    [`encode_codes`] / [`decode_codes`] (image <-> list of codebook indices); everything textual is shared.
    """

    boi_token = "<boi>"
    eoi_token = "<eoi>"
    image_size: tuple[int, int]
    num_tokens: int
    codebook_size: int

    # ------------------------------------------------------------------------------------------------- abstract
    @abc.abstractmethod
    def encode_codes(self, image: PILImage.Image) -> list[int]:
        """The `num_tokens` codebook indices of `image` (resized to `image_size` first)."""

    @abc.abstractmethod
    def decode_codes(self, codes: Sequence[int]) -> PILImage.Image:
        """The RGB image of `num_tokens` codebook indices."""

    # --------------------------------------------------------------------------------------------- vocabulary
    def token(self, code: int) -> str:
        return f"<img_{int(code)}>"

    def token_strings(self) -> list[str]:
        """The image vocabulary: `<img_0>` ... `<img_{codebook_size - 1}>`."""
        return [self.token(i) for i in range(self.codebook_size)]

    def special_tokens(self) -> list[str]:
        """Every token the codec writes: the image vocabulary, then `boi_token` and `eoi_token`."""
        return self.token_strings() + [self.boi_token, self.eoi_token]

    def add_to_tokenizer(self, tokenizer, special_tokens: bool = True) -> int:
        """Add the codec's tokens to `tokenizer` (those it lacks) and return how many were added.

        The caller resizes the model's embeddings: `model.resize_token_embeddings(len(tokenizer))`. With
        `special_tokens=True` (default) they are special tokens (never split or normalised, dropped by
        `decode(..., skip_special_tokens=True)`); with `False`, ordinary added tokens (kept by such a decode)."""
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        vocab = tokenizer.get_vocab()
        missing = [t for t in self.special_tokens() if t not in vocab]
        if not missing:
            return 0
        return tokenizer.add_tokens(missing, special_tokens=special_tokens)

    def image_token_ids(self, tokenizer) -> list[int]:
        """Token ids of the image vocabulary in code order (`ids[i]` is `<img_i>`); the marker ids are
        `marker_token_ids`. Raises a `ValueError` when the tokenizer lacks the codec's tokens."""
        return self._ids(tokenizer, self.token_strings())

    def marker_token_ids(self, tokenizer) -> tuple[int, int]:
        """(`boi` id, `eoi` id) in `tokenizer`."""
        boi, eoi = self._ids(tokenizer, [self.boi_token, self.eoi_token])
        return boi, eoi

    def _ids(self, tokenizer, tokens: list[str]) -> list[int]:
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        vocab = tokenizer.get_vocab()
        missing = [t for t in tokens if t not in vocab]
        if missing:
            raise ValueError(
                f"The tokenizer lacks {len(missing)} of the codec's tokens (e.g. {missing[:3]}); add them with "
                "`codec.add_to_tokenizer(tokenizer)` and resize the model's embeddings "
                "(`model.resize_token_embeddings(len(tokenizer))`)."
            )
        return [vocab[t] for t in tokens]

    # ---------------------------------------------------------------------------------------------------- text
    def codes_to_text(self, codes: Sequence[int]) -> str:
        """`<boi>` + one `<img_i>` per code + `<eoi>` (no spaces)."""
        codes = [int(c) for c in codes]
        self._check_codes(codes)
        return self.boi_token + "".join(self.token(c) for c in codes) + self.eoi_token

    def text_to_codes(self, text: str) -> list[int]:
        """The codes of the first image in `text` (whitespace between tokens is allowed).

        Raises a `ValueError` naming the problem: no `<boi>`, no `<eoi>` after it, a token that is not an image token
        of this codec, or a wrong number of image tokens."""
        if not isinstance(text, str):
            raise ValueError(f"Expected the text of an image, got {type(text).__name__}.")
        start = text.find(self.boi_token)
        if start < 0:
            raise ValueError(
                f"No image in the text: the begin-of-image marker {self.boi_token!r} is missing "
                f"(text starts {text[:60]!r})."
            )
        end = text.find(self.eoi_token, start + len(self.boi_token))
        if end < 0:
            raise ValueError(
                f"The image is not closed: no end-of-image marker {self.eoi_token!r} after {self.boi_token!r}."
            )
        body = text[start + len(self.boi_token) : end]
        codes = []
        position = 0
        for match in _TOKEN_RE.finditer(body):
            gap = body[position : match.start()]
            if gap.strip():
                raise ValueError(f"Unexpected text {gap.strip()[:40]!r} between the image tokens.")
            position = match.end()
            token = match.group(0)
            code = self._code_of(token)
            if code is None:
                raise ValueError(
                    f"Unknown token {token!r} inside the image: expected image tokens <img_0> ... "
                    f"<img_{self.codebook_size - 1}>."
                )
            codes.append(code)
        if body[position:].strip():
            raise ValueError(f"Unexpected text {body[position:].strip()[:40]!r} between the image tokens.")
        if len(codes) != self.num_tokens:
            raise ValueError(
                f"Wrong number of image tokens: got {len(codes)}, expected {self.num_tokens} "
                f"({type(self).__name__} with image_size={self.image_size})."
            )
        return codes

    def _code_of(self, token: str) -> int | None:
        if token.startswith("<img_") and token.endswith(">"):
            digits = token[5:-1]
            if digits.isdigit() and (digits == "0" or not digits.startswith("0")):
                code = int(digits)
                if code < self.codebook_size:
                    return code
        return None

    def _check_codes(self, codes: Sequence[int]) -> None:
        if len(codes) != self.num_tokens:
            raise ValueError(f"Expected {self.num_tokens} codes, got {len(codes)}.")
        bad = [c for c in codes if not 0 <= c < self.codebook_size]
        if bad:
            raise ValueError(f"Codes out of range [0, {self.codebook_size}): {bad[:5]}.")

    def is_valid(self, text: str) -> bool:
        """Whether `text` holds a well-formed image of this codec."""
        try:
            self.text_to_codes(text)
        except ValueError:
            return False
        return True

    # ------------------------------------------------------------------------------------------------ token ids
    def ids_to_codes(self, ids: Sequence[int], tokenizer) -> list[int]:
        """Codes of a sequence of token ids: the image tokens among `ids`, in order (markers and any other token are
        skipped). The count is not checked here; see `ids_to_text`."""
        lookup = {tid: code for code, tid in enumerate(self.image_token_ids(tokenizer))}
        return [lookup[int(i)] for i in ids if int(i) in lookup]

    def ids_to_text(self, ids: Sequence[int], tokenizer) -> str:
        """The canonical image text (`<boi>...<eoi>`, no spaces) of generated token ids holding exactly
        `num_tokens` image tokens (plus optional markers). A `ValueError` otherwise."""
        codes = self.ids_to_codes(ids, tokenizer)
        if len(codes) != self.num_tokens:
            raise ValueError(f"Expected {self.num_tokens} image tokens among the ids, found {len(codes)}.")
        return self.codes_to_text(codes)

    # ---------------------------------------------------------------------------------------------- public API
    def encode(self, image: PILImage.Image) -> str:
        """`"<boi><img_3><img_17>...<eoi>"`: the image (resized to `image_size` first) as text."""
        return self.codes_to_text(self.encode_codes(image))

    def decode(self, text: str) -> PILImage.Image:
        """The first image in `text`. A `ValueError` with a clear message when it is malformed (no markers, wrong
        token count, unknown token)."""
        return self.decode_codes(self.text_to_codes(text))

    def _prepare(self, image) -> PILImage.Image:
        Image = _pil()
        if not isinstance(image, Image.Image):
            import numpy as np

            array = np.asarray(image)
            if array.dtype != np.uint8:
                array = np.clip(array, 0, 255).astype(np.uint8)
            image = Image.fromarray(array)
        image = image.convert("RGB")
        if image.size != tuple(self.image_size):
            image = image.resize(tuple(self.image_size), resample=Image.Resampling.BOX)
        return image

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={tuple(self.image_size)}, num_tokens={self.num_tokens}, "
            f"codebook_size={self.codebook_size})"
        )


class PaletteCodec(ImageCodec):
    """A deterministic codec without learned weights: a grid of patches, each the nearest colour of a fixed palette.

    Args:
        grid (`int` or `(columns, rows)`, defaults to `(8, 8)`): patches per row and per column; `num_tokens` is
            `columns * rows` (row-major order, top-left first).
        patch_size (`int`, defaults to 4): side of a patch in pixels; `image_size` is `(columns * patch_size,
            rows * patch_size)`.
        palette (sequence of RGB triples, defaults to [`DEFAULT_PALETTE`], 16 colours): the codebook.

    Encoding resizes the image to `image_size` (box filter), averages each patch and picks the nearest palette colour
    (squared RGB distance; ties go to the lower index). Decoding paints each patch with its colour, so the round trip
    `encode(decode(text)) == text` always holds, and `decode(encode(image)) == image` for every patch-constant image
    in palette colours.
    """

    def __init__(self, grid: int | tuple[int, int] = (8, 8), patch_size: int = 4, palette=DEFAULT_PALETTE):
        if isinstance(grid, int):
            grid = (grid, grid)
        columns, rows = (int(g) for g in grid)
        if columns < 1 or rows < 1 or patch_size < 1:
            raise ValueError(f"`grid` and `patch_size` must be positive, got grid={grid}, patch_size={patch_size}.")
        palette = [tuple(int(v) for v in colour) for colour in palette]
        if len(palette) < 2 or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in palette):
            raise ValueError("`palette` must hold at least two RGB triples of integers in [0, 255].")
        if len(set(palette)) != len(palette):
            raise ValueError("`palette` has duplicate colours.")
        self.grid = (columns, rows)
        self.patch_size = int(patch_size)
        self.palette = tuple(palette)
        self.image_size = (columns * self.patch_size, rows * self.patch_size)
        self.num_tokens = columns * rows
        self.codebook_size = len(palette)

    def nearest(self, colours):
        """Palette index nearest to each RGB colour of an `(..., 3)` array."""
        import numpy as np

        colours = np.asarray(colours, dtype=np.float64)
        palette = np.asarray(self.palette, dtype=np.float64)
        distances = ((colours[..., None, :] - palette) ** 2).sum(-1)
        return distances.argmin(-1)

    def encode_codes(self, image) -> list[int]:
        import numpy as np

        array = np.asarray(self._prepare(image), dtype=np.float64)
        columns, rows = self.grid
        p = self.patch_size
        means = array.reshape(rows, p, columns, p, 3).mean(axis=(1, 3))
        return [int(c) for c in self.nearest(means).reshape(-1)]

    def codes_to_array(self, codes: Sequence[int]):
        """The `(height, width, 3)` uint8 array of `codes`."""
        import numpy as np

        codes = [int(c) for c in codes]
        self._check_codes(codes)
        columns, rows = self.grid
        colours = np.asarray(self.palette, dtype=np.uint8)[np.asarray(codes)].reshape(rows, columns, 3)
        return colours.repeat(self.patch_size, axis=0).repeat(self.patch_size, axis=1)

    def decode_codes(self, codes: Sequence[int]):
        return _pil().fromarray(self.codes_to_array(codes))

    def __repr__(self) -> str:
        return f"PaletteCodec(grid={self.grid}, patch_size={self.patch_size}, codebook_size={self.codebook_size})"


class VQCodec(ImageCodec):
    """A learned codec: a VQ-VAE from transformers, `JanusVQVAE` (Janus / Janus-Pro) or `Emu3VQVAE` (Emu3).

    Args:
        model (`JanusVQVAE`, `Emu3VQVAE`, or a Hub id / local folder of one): the VQ-VAE, used frozen in eval mode.
        image_size (`int` or `(width, height)`, *optional*): the size images are resized to. Defaults to the size
            the model's latent grid implies (Janus: `num_patches * 2 ** (len(channel_multiplier) - 1)`); Emu3 needs
            it (a multiple of its spatial factor).
        mean, std (`float`, defaults to 0.5): pixel normalisation, `(x / 255 - mean) / std` (both models expect
            pixels in [-1, 1]); decoded pixels are mapped back and clipped.

    The codes are the VQ-VAE's quantizer indices (`codebook_size = config.num_embeddings`, or Emu3's
    `codebook_size`), row-major over the latent grid.

    Round trips: `decode(encode(image))` is the VQ-VAE's reconstruction (lossy). `encode(decode(text))` gives back
    `text` only for a VQ-VAE whose decoder/encoder pair is (close to) idempotent on its own reconstructions, which a
    trained model approximately is and a randomly initialised one is not; it is always a valid image of the same
    length. (Janus also L2-normalises codebook entries when decoding but not when quantizing, as in transformers.)
    """

    def __init__(self, model, image_size: int | tuple[int, int] | None = None, mean: float = 0.5, std: float = 0.5,
                 device=None):
        import torch

        if isinstance(model, str):
            model = self._load(model)
        self.model = model.eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        if device is not None:
            self.model.to(device)
        self.mean, self.std = float(mean), float(std)
        config = model.config
        name = type(model).__name__
        if "Janus" in name or getattr(config, "model_type", "") == "janus_vqgan":
            self.kind = "janus"
            factor = 2 ** (len(config.channel_multiplier) - 1)
            side = config.num_patches * factor
            default_size = (side, side)
            self.latent = (config.num_patches, config.num_patches)  # (rows, columns)
            self.codebook_size = int(config.num_embeddings)
        elif "Emu3" in name or getattr(config, "model_type", "") == "emu3_vqgan":
            self.kind = "emu3"
            factor = 2 ** (len(config.channel_multiplier) - 1)
            self.factor = factor
            default_size = None
            self.codebook_size = int(config.codebook_size)
        else:
            raise TypeError(
                f"VQCodec wraps a transformers JanusVQVAE or Emu3VQVAE, got {name}. Use PaletteCodec for a codec "
                "without learned weights."
            )
        if image_size is None:
            if default_size is None:
                raise ValueError("Give `image_size` for an Emu3 VQ-VAE (a multiple of its spatial factor).")
            image_size = default_size
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        if self.kind == "janus":
            if self.image_size != default_size:
                raise ValueError(
                    f"This JanusVQVAE decodes {default_size} images ({config.num_patches}x{config.num_patches} "
                    f"codes); got image_size={self.image_size}."
                )
        else:
            w, h = self.image_size
            if w % self.factor or h % self.factor:
                raise ValueError(f"Emu3 needs an image_size divisible by its spatial factor {self.factor}.")
            self.latent = (h // self.factor, w // self.factor)
        self.num_tokens = self.latent[0] * self.latent[1]
        self._torch = torch

    @staticmethod
    def _load(name: str):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name)
        model_type = getattr(config, "model_type", "")
        if model_type == "janus_vqgan":
            from transformers import JanusVQVAE

            return JanusVQVAE.from_pretrained(name, use_safetensors=True)
        if model_type == "emu3_vqgan":
            from transformers import Emu3VQVAE

            return Emu3VQVAE.from_pretrained(name, use_safetensors=True)
        raise ValueError(
            f"{name!r} is a {model_type!r} checkpoint; VQCodec loads a JanusVQVAE ('janus_vqgan') or an Emu3VQVAE "
            "('emu3_vqgan'). From a full Janus/Emu3 checkpoint, pass its VQ-VAE module (`model.model.vqmodel`)."
        )

    @classmethod
    def tiny(cls, kind: str = "janus", *, num_embeddings: int = 64, latent: int = 4, seed: int = 0) -> VQCodec:
        """A tiny randomly initialised VQ-VAE (for tests and demos): `latent x latent` codes of `num_embeddings`."""
        import torch

        torch.manual_seed(seed)
        if kind == "janus":
            from transformers import JanusVQVAE, JanusVQVAEConfig

            config = JanusVQVAEConfig(
                embed_dim=8, num_embeddings=num_embeddings, latent_channels=32, base_channels=32,
                channel_multiplier=[1, 1], num_res_blocks=1, num_patches=latent,
            )
            return cls(JanusVQVAE(config))
        if kind == "emu3":
            from transformers import Emu3VQVAE, Emu3VQVAEConfig

            config = Emu3VQVAEConfig(
                codebook_size=num_embeddings, embed_dim=8, latent_channels=8, double_latent=False, in_channels=3,
                out_channels=3, temporal_downsample_factor=1, base_channels=32, channel_multiplier=[1, 1],
                num_res_blocks=1, attn_resolutions=[], hidden_size=32, num_attention_heads=1,
            )
            return cls(Emu3VQVAE(config), image_size=2 * latent)
        raise ValueError(f"`kind` must be 'janus' or 'emu3', got {kind!r}.")

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _pixels(self, image):
        import numpy as np

        array = np.asarray(self._prepare(image), dtype=np.float32) / 255.0
        array = (array - self.mean) / self.std
        tensor = self._torch.from_numpy(array).permute(2, 0, 1)[None]
        return tensor.to(self.device, dtype=next(self.model.parameters()).dtype)

    def encode_codes(self, image) -> list[int]:
        torch = self._torch
        pixels = self._pixels(image)
        with torch.no_grad():
            if self.kind == "janus":
                codes = self.model.encode(pixels).image_tokens
            else:
                sizes = torch.tensor([[pixels.shape[2], pixels.shape[3]]], device=pixels.device)
                out = self.model.encode(pixels, sizes)
                codes = getattr(out, "image_tokens", out)
                codes = codes[0] if isinstance(codes, (list, tuple)) else codes
        codes = [int(c) for c in codes.reshape(-1).tolist()]
        if len(codes) != self.num_tokens:
            raise RuntimeError(f"The VQ-VAE gave {len(codes)} codes, expected {self.num_tokens}.")
        return codes

    def decode_codes(self, codes: Sequence[int]):
        import numpy as np

        torch = self._torch
        codes = [int(c) for c in codes]
        self._check_codes(codes)
        ids = torch.tensor(codes, dtype=torch.long, device=self.device)
        with torch.no_grad():
            if self.kind == "janus":
                pixels = self.model.decode(ids[None])
            else:
                pixels = self.model.decode(ids.view(1, *self.latent))
        array = pixels[0].float().permute(1, 2, 0).cpu().numpy() * self.std + self.mean
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
        image = _pil().fromarray(array)
        if image.size != self.image_size:
            image = image.resize(self.image_size, resample=_pil().Resampling.BICUBIC)
        return image


CODECS = {"palette": PaletteCodec, "vq": VQCodec}


def get_codec(name: str, **kwargs: Any) -> ImageCodec:
    """A codec by name: `"palette"` ([`PaletteCodec`], kwargs `grid`, `patch_size`, `palette`) or `"vq"`
    ([`VQCodec`], kwargs `model` (a VQ-VAE or a Hub id / folder), `image_size`, `mean`, `std`; or `tiny=True` for
    a tiny random one)."""
    if name == "palette":
        return PaletteCodec(**kwargs)
    if name == "vq":
        if kwargs.pop("tiny", False):
            return VQCodec.tiny(**kwargs)
        if "model" not in kwargs:
            raise ValueError("get_codec('vq') needs `model=` (a JanusVQVAE / Emu3VQVAE, or a Hub id or folder).")
        return VQCodec(**kwargs)
    raise ValueError(f"Unknown codec {name!r}; the codecs are {sorted(CODECS)}.")
