"""Image codecs: exact palette round trips, the VQ codec on tiny random VQ-VAEs, and image tokens in tokenizers."""

import random

import numpy as np
import pytest

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from trl_swirl.codecs import DEFAULT_PALETTE, ImageCodec, PaletteCodec, VQCodec, get_codec  # noqa: E402
from trl_swirl.tiny import build_word_tokenizer  # noqa: E402


def random_palette_image(codec: PaletteCodec, seed: int = 0) -> Image.Image:
    """A patch-constant image in palette colours: exactly what the palette codec represents."""
    rng = np.random.RandomState(seed)
    columns, rows = codec.grid
    codes = rng.randint(0, codec.codebook_size, size=(rows, columns))
    array = np.asarray(codec.palette, dtype=np.uint8)[codes]
    array = array.repeat(codec.patch_size, 0).repeat(codec.patch_size, 1)
    return Image.fromarray(array)


# ----------------------------------------------------------------------------------------------------- palette
@pytest.mark.parametrize("grid,patch", [((8, 8), 4), ((5, 3), 2), (4, 1)])
def test_palette_exact_round_trip(grid, patch):
    codec = PaletteCodec(grid=grid, patch_size=patch)
    for seed in range(3):
        image = random_palette_image(codec, seed)
        text = codec.encode(image)
        assert text.startswith("<boi>") and text.endswith("<eoi>") and " " not in text
        assert len(codec.text_to_codes(text)) == codec.num_tokens
        decoded = codec.decode(text)
        assert decoded.size == codec.image_size
        np.testing.assert_array_equal(np.asarray(decoded), np.asarray(image))  # pixel-exact
        assert codec.encode(decoded) == text


def test_palette_text_round_trip_and_arbitrary_images():
    codec = PaletteCodec()
    rng = random.Random(0)
    for _ in range(5):
        codes = [rng.randrange(codec.codebook_size) for _ in range(codec.num_tokens)]
        text = codec.codes_to_text(codes)
        assert codec.encode(codec.decode(text)) == text
    photo = Image.fromarray((np.random.RandomState(1).rand(50, 70, 3) * 255).astype(np.uint8))
    text = codec.encode(photo)  # resized, then quantised
    assert codec.is_valid(text) and codec.encode(photo) == text  # deterministic
    assert codec.decode(text).size == (32, 32)
    # grayscale and RGBA inputs are converted
    assert codec.is_valid(codec.encode(photo.convert("L"))) and codec.is_valid(codec.encode(photo.convert("RGBA")))


def test_palette_interface():
    codec = get_codec("palette", grid=4, patch_size=2)
    assert isinstance(codec, ImageCodec) and codec.image_size == (8, 8) and codec.num_tokens == 16
    assert codec.codebook_size == len(DEFAULT_PALETTE) == 16
    assert codec.token_strings() == [f"<img_{i}>" for i in range(16)]
    assert codec.special_tokens() == codec.token_strings() + ["<boi>", "<eoi>"]
    with pytest.raises(ValueError, match="Unknown codec"):
        get_codec("jpeg")
    with pytest.raises(ValueError, match="duplicate"):
        PaletteCodec(palette=[(0, 0, 0), (0, 0, 0)])


@pytest.mark.parametrize(
    "text,message",
    [
        ("no image here", "begin-of-image"),
        ("<boi><img_1><img_2>", "not closed"),
        ("<boi>" + "<img_1>" * 3 + "<eoi>", "Wrong number"),
        ("<boi>" + "<img_1>" * 3 + "<img_16><eoi>", "Unknown token"),
        ("<boi>" + "<img_1>" * 3 + "<foo><eoi>", "Unknown token"),
        ("<boi>" + "<img_01>" * 4 + "<eoi>", "Unknown token"),
        ("<boi><img_1> red <img_1><img_1><img_1><eoi>", "Unexpected text"),
    ],
)
def test_decode_errors(text, message):
    codec = PaletteCodec(grid=2, patch_size=1)
    with pytest.raises(ValueError, match=message):
        codec.decode(text)


def test_decode_tolerates_spaces_and_surrounding_text():
    codec = PaletteCodec(grid=2, patch_size=1)
    text = codec.codes_to_text([1, 2, 3, 4])
    spaced = "State: <boi> <img_1> <img_2>\n<img_3> <img_4> <eoi> and then " + codec.codes_to_text([0, 0, 0, 0])
    assert codec.text_to_codes(spaced) == [1, 2, 3, 4]  # the first image
    assert codec.text_to_codes(text) == [1, 2, 3, 4]


# ----------------------------------------------------------------------------------------------------- tokenizer
@pytest.mark.parametrize("special", [True, False])
def test_tokenizer_splits_image_tokens(tmp_path, special):
    codec = PaletteCodec(grid=2, patch_size=1)
    tokenizer = build_word_tokenizer(["move red square left"])
    before = len(tokenizer)
    added = codec.add_to_tokenizer(tokenizer, special_tokens=special)
    assert added == codec.codebook_size + 2 and len(tokenizer) == before + added
    assert codec.add_to_tokenizer(tokenizer, special_tokens=special) == 0  # idempotent

    text = "State:\n<boi><img_1><img_2><img_3><img_0><eoi>\nAction:\nmove red square left"
    expected = ["State:", "<boi>", "<img_1>", "<img_2>", "<img_3>", "<img_0>", "<eoi>", "Action:", "move", "red",
                "square", "left"]
    for tok in (tokenizer, None):
        if tok is None:  # after save / AutoTokenizer.from_pretrained
            tokenizer.save_pretrained(tmp_path)
            tok = AutoTokenizer.from_pretrained(tmp_path)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.convert_ids_to_tokens(ids) == expected
        assert tok.convert_ids_to_tokens(tok("<boi><img_1><img_2><eoi>", add_special_tokens=False)["input_ids"]) == [
            "<boi>", "<img_1>", "<img_2>", "<eoi>"]
        image_ids = codec.image_token_ids(tok)
        assert tok.convert_ids_to_tokens(image_ids) == codec.token_strings()
        assert codec.ids_to_text(ids, tok) == "<boi><img_1><img_2><img_3><img_0><eoi>"
        decoded = tok.decode(ids, skip_special_tokens=False)
        assert codec.text_to_codes(decoded) == [1, 2, 3, 0]  # the decoder's spaces are accepted
        if special:  # special tokens vanish from a skip_special_tokens decode (hence the trainer's decoder hook)
            assert "<img_1>" not in tok.decode(ids, skip_special_tokens=True)


def test_image_token_ids_needs_tokens():
    codec = PaletteCodec(grid=2, patch_size=1)
    with pytest.raises(ValueError, match="add_to_tokenizer"):
        codec.image_token_ids(build_word_tokenizer(["a"]))


# ----------------------------------------------------------------------------------------------------------- VQ
@pytest.mark.parametrize("kind,latent", [("janus", 4), ("emu3", 4)])
def test_vq_codec_tiny(kind, latent):
    codec = get_codec("vq", tiny=True, kind=kind, latent=latent, num_embeddings=32)
    assert isinstance(codec, VQCodec) and codec.num_tokens == latent * latent and codec.codebook_size == 32
    photo = Image.fromarray((np.random.RandomState(0).rand(40, 30, 3) * 255).astype(np.uint8))
    text = codec.encode(photo)
    codes = codec.text_to_codes(text)
    assert len(codes) == codec.num_tokens and all(0 <= c < 32 for c in codes)
    assert codec.encode(photo) == text  # deterministic
    image = codec.decode(text)
    assert image.size == codec.image_size and image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(codec.decode(text)), np.asarray(image))  # deterministic
    # encode(decode(tokens)) is a valid image of the same length; it equals the tokens only for a VQ-VAE that is
    # idempotent on its own reconstructions (a trained one, approximately), not for random weights
    again = codec.encode(image)
    assert codec.is_valid(again) and len(codec.text_to_codes(again)) == codec.num_tokens


def test_vq_codec_rejects_other_models():
    from trl_swirl.tiny import build_tiny_causal_lm

    with pytest.raises(TypeError, match="JanusVQVAE or Emu3VQVAE"):
        VQCodec(build_tiny_causal_lm(build_word_tokenizer(["a"]), hidden_size=16, num_hidden_layers=1))
    with pytest.raises(ValueError, match="needs `model=`"):
        get_codec("vq")
